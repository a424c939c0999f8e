"""One-point PDF of a signal-to-noise map, and the threshold counts it shares with V0 (SCIENCE.md §6.4).

The original stores ``ConvergenceMap(nu_map).pdf(bins)[1]`` =
``np.histogram(nu_map, bins, density=True)[0]``: bins ``[e_k, e_{k+1})`` (the last one closed),
normalised over the pixels inside ``[e_0, e_K]`` only, so ``sum(pdf * diff(bins)) = 1``.

Pixels are classified by a *level* (:func:`threshold_levels`) that separates values lying exactly on
an edge from those strictly between edges: level ``2j + 1`` is ``x == e_j`` and level ``2j`` is
``e_{j-1} < x < e_j`` (level 0 below ``e_0``, level ``2K + 2`` above ``e_K``). The level counts give
the histogram here, and V0 and the strict threshold bins of the Minkowski functionals
(:mod:`.minkowski`), so the smoothed-map statistics classify every pixel once. We classify with
comparisons rather than ``np.histogram`` because one sweep then serves all of them, exactly
(values on an edge included), and faster.
"""
import numpy as np

from .binning import validate_edges

#: Values per chunk in :func:`pdf` (keeps the comparison masks in cache).
CHUNK_SIZE = 1 << 17


def pdf(nu_map, bins) -> np.ndarray:
    """Normalised histogram of ``nu_map`` (``np.histogram(nu_map, bins, density=True)[0]``).

    Parameters
    ----------
    nu_map : array_like
        Finite signal-to-noise map (any shape, typically (N, N)); dimensionless.
    bins : array_like, shape (nbins + 1,)
        Strictly increasing threshold edges, e.g. ``linspace(-4, 4, 9)``.

    Returns
    -------
    numpy.ndarray, float64, shape (nbins,)
        Density over the pixels within ``[bins[0], bins[-1]]``; all NaN if there are none
        (numpy's 0/0).
    """
    edges = validate_edges(bins, "bins")
    flat = np.asarray(nu_map, dtype=np.float64).reshape(-1)
    if not np.isfinite(flat).all():
        raise ValueError("nu_map: expected finite values, found NaN or inf")
    counts = np.zeros(level_count(edges), dtype=np.int64)
    for start in range(0, flat.size, CHUNK_SIZE):
        level = threshold_levels(flat[start:start + CHUNK_SIZE], edges)
        counts += np.bincount(level, minlength=counts.size)
    return pdf_from_level_counts(counts, edges)


def level_count(edges: np.ndarray) -> int:
    """Number of levels of :func:`threshold_levels` for these edges, ``2 * len(edges) + 1``."""
    return 2 * edges.size + 1


def threshold_levels(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Level of each value against the edges (no input validation).

    Parameters
    ----------
    values : numpy.ndarray of float64
        Finite values, any shape.
    edges : numpy.ndarray, shape (K + 1,)
        Validated, strictly increasing edges.

    Returns
    -------
    numpy.ndarray of unsigned int, shape of ``values``
        The number of cut points ``nextafter(e_0, -inf) <= e_0 <= nextafter(e_1, -inf) <= ...``
        strictly below each value: ``2j + 1`` when ``x == e_j``, ``2j`` when ``e_{j-1} < x < e_j``.
    """
    cuts = np.empty(2 * edges.size)
    cuts[0::2] = np.nextafter(edges, -np.inf)
    cuts[1::2] = edges
    level = np.zeros(values.shape, dtype=np.min_scalar_type(cuts.size))
    above = np.empty(values.shape, dtype=bool)
    for cut in cuts:
        level += np.greater(values, cut, out=above).view(np.uint8)
    return level


def exceedance_counts(counts: np.ndarray) -> np.ndarray:
    """``#(x > e_k)`` for every edge, shape (K + 1,), from the level counts of :func:`threshold_levels`."""
    at_or_above_level = np.cumsum(counts[::-1])[::-1]
    return at_or_above_level[2::2]


def pdf_from_level_counts(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram density from level counts, with ``np.histogram(density=True)``'s conventions.

    Bin k holds ``e_k <= x < e_{k+1}`` (levels 2k+1 and 2k+2; the last bin also ``x == e_K``); the
    result is ``hist / diff(edges) / hist.sum()`` (NaN everywhere when no pixel is in range).
    """
    hist = counts[1:-2:2] + counts[2:-1:2]
    hist[-1] += counts[-2]
    total = hist.sum()
    if total == 0:
        return np.full(hist.shape, np.nan)
    return hist / np.diff(edges) / total
