"""Peak and minimum counts of a signal-to-noise map, lenstools conventions (SCIENCE.md §6.4).

The original runs ``ConvergenceMap(nu_map).locatePeaks(bins)`` and then drops the map border:

* a pixel is a peak if it is strictly greater than its 8 neighbours, neighbours taken periodically;
  the lenstools C code (``is_peak``) holds the centre value in a C ``float``, so the test is
  ``float32(nu[i, j]) > nu[neighbour]`` with the neighbours in float64 (reproduced here: it decides
  ties, e.g. on plateaus);
* heights (``nu`` in float64) are kept when ``bins[0] <= h < bins[-1]``;
* ``exclude_edges`` keeps ``0 < i < N0-1`` and ``0 < j < N1-1``, so the wrapped neighbours of the
  1-pixel border never decide a kept peak and only interior pixels are examined here;
* ``counts = np.histogram(h, bins)[0]``; stored ``counts / counts.sum() / binwidth``.

Minima are the peaks of ``-nu_map`` (heights ``-nu``) with the distribution reversed so that entry k
lines up with nu-bin k for symmetric bins. Candidates are found in row blocks from the two horizontal
neighbours, and only those are tested against the six others; peaks and minima share the sweep.
"""
import numpy as np

from .binning import validate_edges

#: Rows per block of the neighbour sweep.
BLOCK_ROWS = 32


def peak_counts(nu_map, bins) -> np.ndarray:
    """Normalised distribution of peak heights of ``nu_map`` (lenstools ``locatePeaks`` + border cut).

    Parameters
    ----------
    nu_map : array_like, shape (N0, N1), N0, N1 >= 3
        Finite signal-to-noise map.
    bins : array_like, shape (nbins + 1,)
        Strictly increasing height edges, e.g. ``linspace(-4, 4, 9)``.

    Returns
    -------
    numpy.ndarray, float64, shape (nbins,)
        ``counts / counts.sum() / diff(bins)``; NaN everywhere if no peak lies in the bins.
    """
    nu, edges = _validated(nu_map, bins)
    return normalised_counts(extrema_heights(nu, edges, minima=False)[0], edges)


def minima_counts(nu_map, bins) -> np.ndarray:
    """Normalised distribution of minima: ``peak_counts(-nu_map, bins)[::-1]``.

    Same parameters and return value as :func:`peak_counts`.
    """
    nu, edges = _validated(nu_map, bins)
    return normalised_counts(extrema_heights(nu, edges, maxima=False)[1], edges)[::-1]


def normalised_counts(heights: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``histogram(heights, edges) / total / diff(edges)`` (NaN everywhere when there are none).

    The original divides by the scalar ``bins[1] - bins[0]``; for the uniform production bins
    (``linspace(-4, 4, 9)``) that is the same number as ``diff(bins)``.
    """
    counts = np.histogram(heights, edges)[0]
    total = counts.sum()
    if total == 0:
        return np.full(counts.shape, np.nan)
    return counts / total / np.diff(edges)


def extrema_heights(nu: np.ndarray, edges: np.ndarray, maxima: bool = True, minima: bool = True):
    """Heights of the interior local maxima and minima of ``nu`` inside the bin range.

    No input validation: ``nu`` is a finite, C-contiguous float64 (N0, N1) array with N0, N1 >= 3
    and ``edges`` validated edges.

    Returns
    -------
    (peak_heights, minimum_heights) : tuple of float64 arrays
        ``nu`` at strict maxima with ``edges[0] <= nu < edges[-1]``, and ``-nu`` at strict minima
        with ``edges[0] <= -nu < edges[-1]`` (empty for a kind not requested).
    """
    n0, n1 = nu.shape
    flat = nu.reshape(-1)
    peak_parts, minimum_parts = [], []
    # Flat offsets of the neighbours above and below (the left/right ones find candidates);
    # straight up and down first, as they reject most candidates.
    vertical = (-n1, n1, -n1 - 1, -n1 + 1, n1 - 1, n1 + 1)
    for r0 in range(1, n0 - 1, BLOCK_ROWS):
        r1 = min(r0 + BLOCK_ROWS, n0 - 1)
        start, stop = r0 * n1, r1 * n1
        # lenstools compares the centre rounded to float32 (C `float pixel_value`).
        centre = flat[start:stop].astype(np.float32).astype(np.float64)
        left, right = flat[start - 1:stop - 1], flat[start + 1:stop + 1]
        for wanted, compare, parts in ((maxima, np.greater, peak_parts), (minima, np.less, minimum_parts)):
            if not wanted:
                continue
            candidate = compare(centre, left)
            candidate &= compare(centre, right)
            index = np.flatnonzero(candidate)
            column = index % n1
            index = index[(column > 0) & (column < n1 - 1)]
            for offset in vertical:  # each test shrinks the candidate list
                index = index[compare(centre[index], flat[start + offset + index])]
            parts.append(flat[start + index])
    peak_heights = np.concatenate(peak_parts) if peak_parts else np.empty(0)
    minimum_heights = -np.concatenate(minimum_parts) if minimum_parts else np.empty(0)
    return _in_range(peak_heights, edges), _in_range(minimum_heights, edges)


def _in_range(heights: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Heights with ``edges[0] <= h < edges[-1]`` (lenstools' selection in ``peak_locations``)."""
    return heights[(heights >= edges[0]) & (heights < edges[-1])]


def _validated(nu_map, bins):
    """(nu as C-contiguous float64, edges) after checking shape, finiteness and edges."""
    edges = validate_edges(bins, "bins")
    nu = np.ascontiguousarray(nu_map, dtype=np.float64)
    if nu.ndim != 2 or min(nu.shape) < 3:
        raise ValueError(f"nu_map: expected a 2-d array of at least 3 x 3 pixels, got shape {nu.shape}")
    if not np.isfinite(nu).all():
        raise ValueError("nu_map: expected finite values, found NaN or inf")
    return nu, edges
