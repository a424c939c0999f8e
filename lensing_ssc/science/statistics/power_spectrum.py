"""Binned flat-sky power spectrum of a square patch, lenstools conventions (SCIENCE.md §6.2).

This reproduces ``lenstools.ConvergenceMap.powerSpectrum(l_edges)[1]`` (C ``azimuthal_rfft2``)
without lenstools:

* ``F = rfft2(kappa)`` (unnormalised, float64), shape ``(N, N//2 + 1)``;
* mode ``(i, j)`` has multipole ``l = sqrt((min(i, N-i) * lpix)**2 + (j * lpix)**2)`` with the
  fundamental ``lpix = 360 / theta_deg = 2 pi / theta_rad``;
* ``P_k = (theta_rad / N**2)**2 * mean(|F|**2 over the modes with l in (l_k, l_{k+1}])``; every
  stored rfft mode counts once (the ky = 0 and Nyquist columns hold both +kx and -kx); no mean
  subtraction, window or mode-coupling correction; an empty bin gives 0 (as lenstools).

The estimator is written with numpy rather than taken from a library because the lenstools
conventions (bin rule, normalisation, mode counting) must be reproduced exactly. The FFT of a patch
(:func:`patch_rfft2`) can be computed once and shared with the bispectra
(:mod:`lensing_ssc.science.statistics.bispectrum`).
"""
import functools
import numbers

import numpy as np
import scipy.fft

from .binning import bin_mean, multipole_bin_index, validate_edges


def patch_rfft2(patch):
    """Unnormalised real 2-d FFT of a square patch.

    Parameters
    ----------
    patch : array_like, shape (N, N)
        Finite real values (e.g. convergence); converted to float64 like lenstools does.

    Returns
    -------
    numpy.ndarray, complex128, shape (N, N//2 + 1)
        ``rfft2(patch)`` with numpy's sign convention and no normalisation.
    """
    patch = np.asarray(patch, dtype=np.float64)
    if patch.ndim != 2 or patch.shape[0] != patch.shape[1] or patch.shape[0] < 2:
        raise ValueError(f"patch: expected a square (N, N) array with N >= 2, got shape {patch.shape}")
    if not np.isfinite(patch).all():
        raise ValueError("patch: expected finite values, found NaN or inf")
    return scipy.fft.rfft2(patch)


def rfft2_multipoles(N, patch_size_deg):
    """Multipole ``|l|`` of every mode of ``rfft2`` of an (N, N) patch of side ``patch_size_deg``.

    Returns
    -------
    numpy.ndarray, float64, shape (N, N//2 + 1)
        ``sqrt((min(i, N-i) * lpix)**2 + (j * lpix)**2)`` with ``lpix = 360 / patch_size_deg``,
        evaluated in the same floating-point order as the lenstools C code.
    """
    N = check_side(N)
    lpix = fundamental_multipole(patch_size_deg)
    i = np.arange(N)
    lx = np.minimum(i, N - i) * lpix
    ly = np.arange(N // 2 + 1) * lpix
    return np.sqrt(lx[:, None] * lx[:, None] + ly[None, :] * ly[None, :])


def rfft2_bin_index(N, patch_size_deg, l_edges):
    """Multipole bin of every ``rfft2`` mode; -1 where the mode lies in no bin.

    Returns
    -------
    numpy.ndarray of intp, shape (N, N//2 + 1)
        ``k`` for modes with ``l_edges[k] < l <= l_edges[k+1]`` (``l`` from :func:`rfft2_multipoles`).
    """
    return multipole_bin_index(rfft2_multipoles(N, patch_size_deg), l_edges)


def power_spectrum_from_fft(fft_rfft2, N, patch_size_deg, l_edges):
    """Binned power spectrum ``P_k`` from the ``rfft2`` of an (N, N) patch.

    Parameters
    ----------
    fft_rfft2 : numpy.ndarray, complex, shape (N, N//2 + 1)
        Unnormalised ``rfft2`` of the patch (:func:`patch_rfft2`).
    N : int
        Side of the patch in pixels.
    patch_size_deg : float
        Side of the patch in degrees.
    l_edges : array_like, shape (nbin + 1,)
        Strictly increasing, non-negative multipole edges; bins are ``(l_k, l_{k+1}]``.

    Returns
    -------
    numpy.ndarray, float64, shape (nbin,)
        ``P_k`` in sr (kappa**2 sr): ``(theta_rad / N**2)**2 * mean |F|**2`` per bin, 0 for
        a bin without modes.
    """
    N = check_side(N)
    fft_rfft2 = check_rfft2(fft_rfft2, N)
    fundamental_multipole(patch_size_deg)  # validates patch_size_deg
    edges = validate_edges(l_edges, "l_edges")
    flat_index, bin_index, hits = _binned_modes(N, float(patch_size_deg), tuple(edges))
    modes = fft_rfft2.reshape(-1)[flat_index]
    # re*re + im*im, then a per-bin sum in the C loop's (row-major) order.
    mode_power = modes.real * modes.real + modes.imag * modes.imag
    sums = np.bincount(bin_index, weights=mode_power, minlength=edges.size - 1)
    theta_rad = float(patch_size_deg) * np.pi / 180.0
    normalization = (theta_rad / (N * N)) ** 2
    return bin_mean(normalization * sums, hits)


def power_spectrum(patch, patch_size_deg, l_edges):
    """Binned flat-sky power spectrum of a square patch (lenstools ``powerSpectrum``).

    Parameters
    ----------
    patch : array_like, shape (N, N)
        Finite real map (e.g. noisy, unsmoothed convergence).
    patch_size_deg : float
        Side of the patch in degrees.
    l_edges : array_like, shape (nbin + 1,)
        Multipole bin edges, bins ``(l_k, l_{k+1}]``.

    Returns
    -------
    numpy.ndarray, float64, shape (nbin,)
        Raw binned power ``P_k`` (sr); see :func:`dimensionless_cl` for ``l(l+1)P/2pi``.
    """
    fft_rfft2 = patch_rfft2(patch)
    return power_spectrum_from_fft(fft_rfft2, fft_rfft2.shape[0], patch_size_deg, l_edges)


def dimensionless_cl(power, ell):
    """``ell * (ell + 1) * power / (2 pi)``: the stored ``cl`` of SCIENCE.md §6.2 (dimensionless).

    ``power`` has shape (..., nbin) (e.g. one row per patch) and ``ell`` the bin centres, (nbin,).
    """
    power = np.asarray(power, dtype=np.float64)
    ell = np.asarray(ell, dtype=np.float64)
    if ell.ndim != 1 or power.shape[-1:] != ell.shape:
        raise ValueError(f"power, ell: expected shapes (..., nbin) and (nbin,), "
                         f"got {power.shape} and {ell.shape}")
    return ell * (ell + 1.0) * power / (2.0 * np.pi)


def fundamental_multipole(patch_size_deg):
    """Fundamental multipole ``lpix = 360 / patch_size_deg`` (= 2 pi / theta_rad) of a patch."""
    if isinstance(patch_size_deg, bool) or not isinstance(patch_size_deg, numbers.Real) \
            or not np.isfinite(patch_size_deg) or not 0 < patch_size_deg <= 180:
        raise ValueError("patch_size_deg: expected a finite side in degrees in (0, 180], "
                         f"got {patch_size_deg!r}")
    return 360.0 / float(patch_size_deg)


def check_side(N):
    """Return ``N`` as int after checking it is a patch side in pixels (integer >= 2)."""
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 2:
        raise ValueError(f"N: expected the patch side in pixels, an integer >= 2, got {N!r}")
    return int(N)


def check_rfft2(fft_rfft2, N):
    """Return ``fft_rfft2`` as a C-contiguous complex128 array after checking its shape (N, N//2+1)."""
    N = check_side(N)
    fft_rfft2 = np.asarray(fft_rfft2)
    if fft_rfft2.shape != (N, N // 2 + 1):
        raise ValueError(f"fft_rfft2: expected the rfft2 of an ({N}, {N}) patch, shape "
                         f"{(N, N // 2 + 1)}, got {fft_rfft2.shape}")
    if not np.iscomplexobj(fft_rfft2):
        raise ValueError(f"fft_rfft2: expected a complex array (rfft2 output), got dtype {fft_rfft2.dtype}")
    return np.ascontiguousarray(fft_rfft2, dtype=np.complex128)


@functools.lru_cache(maxsize=16)
def _binned_modes(N, patch_size_deg, l_edges):
    """Flat rfft2 indices (row-major order) of the binned modes, their bins and the hits per bin.

    Cached per geometry: the pipeline measures many patches with the same (N, size, edges).
    """
    bin_index = rfft2_bin_index(N, patch_size_deg, np.asarray(l_edges)).reshape(-1)
    flat_index = np.flatnonzero(bin_index >= 0)
    bins = bin_index[flat_index]
    hits = np.bincount(bins, minlength=len(l_edges) - 1)
    for array in (flat_index, bins, hits):
        array.flags.writeable = False
    return flat_index, bins, hits
