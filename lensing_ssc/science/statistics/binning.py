"""Bin edges and centres of the per-patch statistics (SCIENCE.md §6.1).

The production binning of the original analysis (lenstools ``PatchAnalyzer`` defaults) is

* multipoles: 8 log-spaced bins between ell = 300 and 3000,
  ``logspace(log10(300), log10(3000), 9)``, centres = arithmetic midpoints of the edges;
* thresholds (signal-to-noise nu): 8 unit-width bins, ``linspace(-4, 4, 9)``.

Multipole bins are half-open, ``(l_k, l_{k+1}]`` (lower edge excluded), as in the lenstools C
estimators; :func:`multipole_bin_index` implements that rule.
"""
import numpy as np


def ell_edges(lmin=300.0, lmax=3000.0, nbin=8):
    """Log-spaced multipole bin edges, shape ``(nbin + 1,)``.

    Parameters
    ----------
    lmin, lmax : float
        First and last edge (dimensionless multipoles), ``0 < lmin < lmax``.
    nbin : int
        Number of bins, >= 1.

    Returns
    -------
    numpy.ndarray
        ``logspace(log10(lmin), log10(lmax), nbin + 1)`` (float64); the defaults give
        [300, 400.0564, 533.4838, 711.4121, 948.6833, 1265.0895, 1687.0240, 2249.6826, 3000].
    """
    nbin = _check_nbin(nbin)
    if not (np.isfinite(lmin) and np.isfinite(lmax) and 0 < lmin < lmax):
        raise ValueError(f"lmin, lmax: expected finite 0 < lmin < lmax, got lmin={lmin!r}, lmax={lmax!r}")
    return np.logspace(np.log10(lmin), np.log10(lmax), nbin + 1)


def ell_centers(edges):
    """Arithmetic midpoints of bin edges, shape ``(len(edges) - 1,)``.

    ``(edges[1:] + edges[:-1]) / 2``; used for the multipole centres ``ell`` (SCIENCE.md §6.1:
    [350.028, 466.770, ..., 2624.841] for the default edges) and equally valid for the nu bins.
    """
    edges = validate_edges(edges, "edges")
    return 0.5 * (edges[1:] + edges[:-1])


def nu_edges(nu_min=-4.0, nu_max=4.0, nbin=8):
    """Linearly spaced threshold (signal-to-noise nu) bin edges, shape ``(nbin + 1,)``.

    The defaults give [-4, -3, ..., 4] (unit bin width), SCIENCE.md §6.1.
    """
    nbin = _check_nbin(nbin)
    if not (np.isfinite(nu_min) and np.isfinite(nu_max) and nu_min < nu_max):
        raise ValueError(f"nu_min, nu_max: expected finite nu_min < nu_max, got {nu_min!r}, {nu_max!r}")
    return np.linspace(nu_min, nu_max, nbin + 1)


def validate_edges(edges, name):
    """Return ``edges`` as a float64 1-d array after checking it is usable as bin edges.

    Raises ValueError (naming ``name``) unless ``edges`` is 1-d, has at least two entries, is
    finite and strictly increasing.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2:
        raise ValueError(f"{name}: expected a 1-d array of at least 2 bin edges, got shape {edges.shape}")
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"{name}: expected finite, strictly increasing bin edges, got {edges}")
    return edges


def multipole_bin_index(ell, l_edges):
    """Bin index of each multipole for half-open bins ``(l_k, l_{k+1}]``.

    Parameters
    ----------
    ell : array_like
        Multipoles (any shape).
    l_edges : array_like, shape (nbin + 1,)
        Strictly increasing, non-negative bin edges.

    Returns
    -------
    numpy.ndarray of intp, same shape as ``ell``
        ``k`` when ``l_edges[k] < ell <= l_edges[k + 1]``, and -1 when ``ell`` lies in no bin
        (``ell <= l_edges[0]`` or ``ell > l_edges[-1]``).
    """
    l_edges = validate_edges(l_edges, "l_edges")
    if l_edges[0] < 0:
        raise ValueError(f"l_edges: expected non-negative multipole edges, got first edge {l_edges[0]}")
    # side='left' returns i with l_edges[i-1] < ell <= l_edges[i]: exactly the half-open rule.
    index = np.searchsorted(l_edges, ell, side="left") - 1
    return np.where(index >= l_edges.size - 1, -1, index)


def bin_mean(sums, hits):
    """Per-bin mean ``sums / hits``, 0 for a bin with no hits (lenstools leaves those at 0).

    ``sums`` (float) and ``hits`` (int) have shape (nbin,); returns float64, shape (nbin,).
    """
    mean = np.zeros(np.shape(sums), dtype=np.float64)
    filled = hits > 0
    mean[filled] = sums[filled] / hits[filled]
    return mean


def _check_nbin(nbin):
    if isinstance(nbin, bool) or not isinstance(nbin, (int, np.integer)) or nbin < 1:
        raise ValueError(f"nbin: expected an integer >= 1, got {nbin!r}")
    return int(nbin)
