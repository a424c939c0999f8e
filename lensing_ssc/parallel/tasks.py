"""Splitting an ordered task list into contiguous per-rank ranges of balanced cost."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np


def split_by_cost(costs: Sequence[float], nranks: int) -> List[Tuple[int, int]]:
    """Contiguous ``[start, stop)`` index ranges, one per rank, with near-equal summed cost.

    ``costs`` has one non-negative entry per task (rows of a sheet, 1 per patch). Rank r gets the
    tasks whose cost midpoint falls in the r-th equal share of the total, so the split depends only
    on the costs and ``nranks``. Ranges may be empty when there are fewer tasks than ranks.
    """
    if nranks < 1:
        raise ValueError(f"nranks: expected >= 1, got {nranks}")
    costs = np.asarray(costs, dtype=np.float64)
    if costs.ndim != 1 or (costs.size and costs.min() < 0):
        raise ValueError("costs: expected a 1-d sequence of non-negative numbers")
    n = costs.size
    if n == 0:
        return [(0, 0)] * nranks
    # Zero-cost tasks still need an owner: give every task a tiny floor cost.
    weights = costs + max(costs.sum(), 1.0) * 1e-9
    midpoints = np.cumsum(weights) - 0.5 * weights
    share = np.minimum((midpoints / weights.sum() * nranks).astype(np.int64), nranks - 1)
    bounds = np.searchsorted(share, np.arange(nranks + 1), side="left")
    bounds[-1] = n
    return [(int(bounds[r]), int(bounds[r + 1])) for r in range(nranks)]
