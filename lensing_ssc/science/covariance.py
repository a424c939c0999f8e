"""Ensemble statistics over the patches of many simulations: pooled covariance, Hartlap factor,
outlier rule, covariance ratios of two simulation families with bootstrap errors over simulations,
and the order of the data vector (SCIENCE.md §6.6, §10, §11.5).

Arrays are per-patch rows: ``rows`` (n_patches, n_bins); a "group" is the rows of one simulation, so
``groups`` is a sequence of (n_patches_s, n_bins) arrays with the same n_bins. Statistics are
dimensionless, so no units appear here. Variances and covariances use ddof = 1.
"""
from __future__ import annotations

import re
import warnings
from typing import Dict, Iterable, List, Sequence

import numpy as np

from lensing_ssc.science.patch_analysis import summarise_rows

#: Data-vector order of SCIENCE.md §6.6 (the original's StatsMerger "desired order", without the
#: legacy moments): spectra first, then the statistics of the smoothed maps.
SPECTRA_ORDER = ("power_spectra/{ngal}/cl", "bispectra/{ngal}/squeezed", "bispectra/{ngal}/isosceles",
                 "bispectra/{ngal}/equilateral")
SMOOTHED_ORDER = ("pdf", "peaks", "minima", "minkowski/v0", "minkowski/v1", "minkowski/v2")
_NGAL = re.compile(r"ngal_(\d+)$")
_SCALE = re.compile(r"sl_(\d+(?:\.\d+)?)$")


def _as_groups(groups: Sequence[np.ndarray], name: str) -> List[np.ndarray]:
    """float64 2-d copies of ``groups``; ValueError unless they share one number of bins."""
    out = []
    for index, rows in enumerate(groups):
        rows = np.asarray(rows, dtype=np.float64)
        out.append(rows[:, None] if rows.ndim == 1 else rows.reshape(len(rows), int(np.prod(rows.shape[1:]))))
    if not out:
        raise ValueError(f"{name}: expected at least one group of rows, got none")
    widths = {rows.shape[1] for rows in out}
    if len(widths) > 1:
        raise ValueError(f"{name}: expected groups with one number of bins, got {sorted(widths)}")
    return out


def pooled_summary(groups: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
    """Mean, std, covariance and correlation over the pooled rows of all groups (simulations).

    Returns ``mean`` (p,), ``std`` (p,), ``cov`` (p, p), ``corr`` (p, p) as ``summarise_rows`` does
    for one block (zero-variance bins get correlation 0 off the diagonal).
    """
    return summarise_rows(np.concatenate(_as_groups(groups, "groups")))


def hartlap_factor(n_samples: int, n_bins: int) -> float:
    """Hartlap et al. (2007) de-biasing factor (n - p - 2)/(n - 1) of an inverse sample covariance.

    ``n_samples``: independent rows (patches) used; ``n_bins``: length p of the data vector. The
    factor is only defined for n > p + 2 (ValueError otherwise).
    """
    if n_bins < 1 or n_samples <= n_bins + 2:
        raise ValueError(f"n_samples: the Hartlap factor needs n_samples > n_bins + 2 with n_bins >= 1, "
                         f"got n_samples={n_samples}, n_bins={n_bins}")
    return (n_samples - n_bins - 2) / (n_samples - 1)


def outlier_rows(rows: np.ndarray, n_sigma: float) -> np.ndarray:
    """Rows with any bin at ``|x - mean| >= n_sigma * std`` (the original StatsMerger 5-sigma cut).

    ``rows`` (n, p); mean and std (ddof 1) over the rows, one pass (not iterated); bins with zero
    variance never flag a row. Returns bool (n,), True for an outlier row.
    """
    if not n_sigma > 0:
        raise ValueError(f"n_sigma: expected a positive number, got {n_sigma}")
    rows = _as_groups([rows], "rows")[0]
    if rows.shape[0] < 2:
        raise ValueError(f"rows: need at least 2 rows for a standard deviation, got {rows.shape[0]}")
    deviation = np.abs(rows - rows.mean(axis=0))
    std = rows.std(axis=0, ddof=1)
    live = std > 0
    return np.any(deviation[:, live] >= n_sigma * std[live], axis=1)


def covariance_ratio(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Element-wise ratio first / second of two covariance matrices (or variances); NaN where second is 0."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"second: expected the shape of first {first.shape}, got {second.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(second != 0, first / np.where(second != 0, second, 1.0), np.nan)


def resampled_covariances(groups: Sequence[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """Covariance (ddof 1) of the pooled rows when group s is taken ``counts[b, s]`` times.

    ``groups``: G arrays (n_s, p); ``counts``: int (B, G), e.g. a bootstrap draw of simulations.
    Returns (B, p, p). Exact, from each group's size n_s, mean m_s and scatter W_s about m_s:
    scatter = sum_s c_s W_s + sum_s c_s n_s (m_s - M)(m_s - M)^T with M the resample's pooled mean.
    Every term is formed from deviations (no raw second moments), so bins that are constant in a
    resample get exactly zero variance. A resample costs O(G p^2).
    """
    groups = _as_groups(groups, "groups")
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(groups) or not np.issubdtype(counts.dtype, np.integer) \
            or counts.min() < 0:
        raise ValueError(f"counts: expected non-negative integers of shape (B, {len(groups)}), "
                         f"got {counts.dtype} {counts.shape}")
    p = groups[0].shape[1]
    sizes = np.array([len(rows) for rows in groups], dtype=np.float64)
    means = np.array([rows.mean(axis=0) if len(rows) else np.zeros(p) for rows in groups])
    scatter = np.array([(rows - mean).T @ (rows - mean) for rows, mean in zip(groups, means)])
    weights = counts * sizes  # (B, G): rows contributed by each group
    n = weights.sum(axis=1)
    if n.min() < 2:
        raise ValueError("counts: every resample needs at least 2 rows in total")
    pooled_mean = weights @ means / n[:, None]
    deviation = means[None, :, :] - pooled_mean[:, None, :]  # (B, G, p)
    within = np.tensordot(counts.astype(np.float64), scatter, axes=(1, 0))
    between = np.matmul((weights[:, :, None] * deviation).transpose(0, 2, 1), deviation)
    return (within + between) / (n - 1)[:, None, None]


def bootstrap_covariance_ratio(first_groups: Sequence[np.ndarray], second_groups: Sequence[np.ndarray],
                               n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates over simulations of the covariance ratio cov(first) / cov(second).

    Each resample draws, independently per family, as many simulations as the family has, with
    replacement (``rng.multinomial``: first family's B draws, then the second's), pools their rows and
    takes the element-wise covariance ratio. Patches of one simulation stay together, so the errors
    include the correlation of patches within a map. Returns (n_resamples, p, p), NaN where a
    resample of the second family has zero covariance.
    """
    if not len(first_groups) or not len(second_groups):
        raise ValueError("first_groups, second_groups: expected at least one simulation in each family")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples!r}")
    draws = [rng.multinomial(len(groups), np.full(len(groups), 1.0 / len(groups)), size=int(n_resamples))
             for groups in (first_groups, second_groups)]
    return covariance_ratio(resampled_covariances(first_groups, draws[0]),
                            resampled_covariances(second_groups, draws[1]))


def bootstrap_error(replicates: np.ndarray) -> np.ndarray:
    """Standard deviation (ddof 1) over the first axis of bootstrap replicates, ignoring NaN ones
    (NaN where fewer than 2 are finite)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    if replicates.shape[0] < 2:
        raise ValueError(f"replicates: need at least 2 bootstrap replicates, got {replicates.shape[0]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # entries with < 2 finite replicates -> NaN
        return np.nanstd(replicates, axis=0, ddof=1)


def data_vector_paths(paths: Iterable[str]) -> List[str]:
    """The per-patch dataset paths of the results layout (SCIENCE.md §7) that enter the data vector,
    in the order of SCIENCE.md §6.6, absent ones skipped.

    Per noise level (ascending ngal): ``power_spectra/ngal_N/cl``, bispectra squeezed, isosceles,
    equilateral, then per smoothing scale (ascending, arcmin) ``pdf``, ``peaks``, ``minima``,
    ``minkowski/v0``, ``v1``, ``v2``. Other paths (``sigma/0``, plugins) are not part of it.
    """
    available = set(paths)
    ngal_groups = {part for path in available for part in path.split("/") if _NGAL.match(part)}
    ordered: List[str] = []
    for ngal in sorted(ngal_groups, key=lambda g: int(_NGAL.match(g)[1])):
        ordered += [p for p in (t.format(ngal=ngal) for t in SPECTRA_ORDER) if p in available]
        prefix = f"smoothed_statistics/{ngal}/"
        scales = {path[len(prefix):].split("/")[0] for path in available if path.startswith(prefix)}
        for scale in sorted((s for s in scales if _SCALE.match(s)), key=lambda s: float(_SCALE.match(s)[1])):
            ordered += [p for p in (f"{prefix}{scale}/{name}" for name in SMOOTHED_ORDER) if p in available]
    return ordered


__all__ = ["pooled_summary", "hartlap_factor", "outlier_rows", "covariance_ratio", "resampled_covariances",
           "bootstrap_covariance_ratio", "bootstrap_error", "data_vector_paths"]
