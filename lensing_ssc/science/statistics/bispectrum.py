"""Binned flat-sky bispectra of a square patch, lenstools conventions (SCIENCE.md §6.3).

This reproduces ``lenstools.ConvergenceMap.bispectrum(l_edges, ratio, configuration)[1]`` (C
``bispectrum`` with the ``k1tok2_equilateral`` / ``k1tok2_folded`` rotators) exactly, vectorised
over the Fourier modes instead of looping over them:

* ``F = rfft2(kappa)``, shape ``(N, N//2 + 1)``; first leg ``k1 = (kx1, ky1)`` over the stored
  modes with ``kx1`` the signed FFT frequency (row ``i`` -> ``i`` if ``i < N/2`` else ``i - N``) and
  ``ky1 = j``; ``l1 = sqrt(kx1**2 + ky1**2) * lpix`` (``lpix = 360 / theta_deg``); modes with
  ``l1 >= l_edges[-1]`` are skipped, the others binned in ``(l_k, l_{k+1}]``;
* second leg, integer truncation toward zero (C ``(int)``):

  - ``equilateral``: skip ``k1`` when ``kx1 < 0 and ky1 < kx1 * tan(120 deg)``, else
    ``k2 = (int(cos120 kx1 - sin120 ky1), int(sin120 kx1 + cos120 ky1))``;
  - ``folded`` with ratio ``r`` in (0, 1): ``k2 = (-int(r kx1), -int(r ky1))`` (collinear; the
    original analysis used r = 0.5, "isosceles", and r = 0.1, "squeezed");

* third leg ``k3 = -k1 - k2``; a leg with ``ky < 0`` is read as the conjugate of ``F(-k)``, a leg
  outside the stored half plane (``ky >= N/2 + 1`` or ``|kx| >= N/2 + 1`` after that flip) skips the
  triangle;
* ``B_k = theta_rad**4 / N**6 * sum(Re(F1 F2 F3)) / hits`` per bin, 0 for a bin without triangles.

Only the first-leg modes with ``l1 < l_edges[-1]`` are visited (about 14 000 of the 2.1 million
rfft modes for N = 2048, 10 deg, lmax = 3000), so a configuration costs about a millisecond once the
FFT is known. Hand-written (not a library) because the lenstools triangle selection must be exact.
"""
import functools
import numbers

import numpy as np

from .binning import bin_mean, multipole_bin_index, validate_edges
from .power_spectrum import check_rfft2, check_side, fundamental_multipole, patch_rfft2

# Constants of the lenstools C rotator (double precision literals of k1tok2_equilateral).
_SIN120 = 0.8660254037844386
_COS120 = -0.5
_TAN120 = -1.7320508075688772

#: The three bispectra of the original analysis (SCIENCE.md §6.3): output name ->
#: (configuration, ratio) arguments of :func:`bispectrum`.
NAMED_CONFIGURATIONS = {
    "equilateral": ("equilateral", None),
    "isosceles": ("folded", 0.5),
    "squeezed": ("folded", 0.1),
}


def bispectrum_from_fft(fft_rfft2, N, patch_size_deg, l_edges, configuration, ratio=None):
    """Binned bispectrum ``B_k`` from the ``rfft2`` of an (N, N) patch, N even.

    Parameters
    ----------
    fft_rfft2 : numpy.ndarray, complex, shape (N, N//2 + 1)
        Unnormalised ``rfft2`` of the patch
        (:func:`lensing_ssc.science.statistics.power_spectrum.patch_rfft2`).
    N : int
        Side of the patch in pixels; must be even (the lenstools frequency indexing assumes it).
    patch_size_deg : float
        Side of the patch in degrees.
    l_edges : array_like, shape (nbin + 1,)
        Strictly increasing, non-negative multipole edges for ``|l1|``.
    configuration : {'equilateral', 'folded'}
        Triangle shape.
    ratio : float or None
        Folding ratio ``r`` in (0, 1) for ``'folded'``; must be None for ``'equilateral'``.

    Returns
    -------
    numpy.ndarray, float64, shape (nbin,)
        Raw ``B_k`` (kappa**3 sr**2); see :func:`dimensionless_bispectrum`.
    """
    N = check_side(N)
    fft_rfft2 = check_rfft2(fft_rfft2, N)
    if N % 2:
        raise ValueError(f"N: expected an even patch side for the bispectrum, got {N}")
    lpix = fundamental_multipole(patch_size_deg)
    edges = validate_edges(l_edges, "l_edges")
    ratio = _check_configuration(configuration, ratio)
    kx1, ky1, flat1, bins = _first_leg_modes(N, lpix, tuple(edges))

    if configuration == "equilateral":
        keep = ~((kx1 < 0) & (ky1 < kx1 * _TAN120))
        kx2 = _c_int(_COS120 * kx1 - _SIN120 * ky1)
        ky2 = _c_int(_SIN120 * kx1 + _COS120 * ky1)
    else:
        keep = np.ones(kx1.shape, dtype=bool)
        kx2 = -_c_int(ratio * kx1)
        ky2 = -_c_int(ratio * ky1)
    kx3 = -kx1 - kx2
    ky3 = -ky1 - ky2

    flat2, conjugate2, inside2 = _hermitian_location(kx2, ky2, N)
    flat3, conjugate3, inside3 = _hermitian_location(kx3, ky3, N)
    keep &= inside2 & inside3

    flat_fft = fft_rfft2.reshape(-1)
    b1 = flat_fft[flat1[keep]]
    b2 = flat_fft[flat2[keep]]
    b3 = flat_fft[flat3[keep]]
    r1, i1 = b1.real, b1.imag
    r2, i2 = b2.real, np.where(conjugate2[keep], -b2.imag, b2.imag)
    r3, i3 = b3.real, np.where(conjugate3[keep], -b3.imag, b3.imag)
    # Re(b1 b2 b3) expanded in the same order as the C code.
    triple = r1 * r2 * r3 - r1 * i2 * i3 - i1 * r2 * i3 - i1 * i2 * r3

    nbin = edges.size - 1
    sums = np.bincount(bins[keep], weights=triple, minlength=nbin)
    hits = np.bincount(bins[keep], minlength=nbin)
    theta_rad = float(patch_size_deg) * np.pi / 180.0
    normalization = theta_rad ** 4 / float(N) ** 6
    return bin_mean(normalization * sums, hits)


def bispectrum(patch, patch_size_deg, l_edges, configuration, ratio=None):
    """Binned flat-sky bispectrum of a square patch (lenstools ``ConvergenceMap.bispectrum``).

    Parameters
    ----------
    patch : array_like, shape (N, N), N even
        Finite real map (e.g. noisy, unsmoothed convergence).
    patch_size_deg : float
        Side of the patch in degrees.
    l_edges : array_like, shape (nbin + 1,)
        Multipole bin edges for ``|l1|``, bins ``(l_k, l_{k+1}]``.
    configuration : {'equilateral', 'folded'}
        Triangle shape; see :data:`NAMED_CONFIGURATIONS` for the three used in production.
    ratio : float or None
        Folding ratio in (0, 1) for ``'folded'``; None for ``'equilateral'``.

    Returns
    -------
    numpy.ndarray, float64, shape (nbin,)
        Raw ``B_k`` (kappa**3 sr**2).
    """
    fft_rfft2 = patch_rfft2(patch)
    return bispectrum_from_fft(fft_rfft2, fft_rfft2.shape[0], patch_size_deg, l_edges,
                               configuration, ratio)


def dimensionless_bispectrum(bispec, ell):
    """``abs(bispec * ell**4 / (2 pi)**2)``: the stored bispectra of SCIENCE.md §6.3.

    Note the absolute value (the original stores ``|B| ell^4 / (2 pi)^2``, sign discarded).
    ``bispec`` has shape (..., nbin) (e.g. one row per patch) and ``ell`` the bin centres, (nbin,).
    """
    bispec = np.asarray(bispec, dtype=np.float64)
    ell = np.asarray(ell, dtype=np.float64)
    if ell.ndim != 1 or bispec.shape[-1:] != ell.shape:
        raise ValueError(f"bispec, ell: expected shapes (..., nbin) and (nbin,), "
                         f"got {bispec.shape} and {ell.shape}")
    return np.abs(bispec * ell ** 4 / (2.0 * np.pi) ** 2)


def _check_configuration(configuration, ratio):
    """Validate (configuration, ratio); return ratio as a Python float (or None)."""
    if configuration == "equilateral":
        if ratio is not None:
            raise ValueError(f"ratio: the equilateral configuration takes no ratio, got {ratio!r}")
        return None
    if configuration == "folded":
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio < 1:
            raise ValueError(f"ratio: expected a folding ratio 0 < ratio < 1 for 'folded', got {ratio!r}")
        return float(ratio)
    raise ValueError(f"configuration: expected 'equilateral' or 'folded', got {configuration!r}")


def _c_int(values):
    """C ``(int)`` cast of doubles: truncation toward zero."""
    return np.trunc(values).astype(np.int64)


def _hermitian_location(kx, ky, N):
    """Locate integer wavevectors ``(kx, ky)`` in the rfft2 array, lenstools style.

    Returns ``(flat_index, conjugate, inside)``: the flat index into the (N, N//2 + 1) array, whether
    the stored value must be conjugated (the vector had ``ky < 0`` and was negated), and whether the
    vector is in range (``ky < N/2 + 1`` and ``|kx| < N/2 + 1`` after the flip); ``flat_index`` is 0
    where ``inside`` is False.
    """
    size_y = N // 2 + 1
    conjugate = ky < 0
    kx = np.where(conjugate, -kx, kx)
    ky = np.where(conjugate, -ky, ky)
    inside = (ky < size_y) & (kx > -size_y) & (kx < size_y)
    row = np.where(kx < 0, kx + N, kx)
    flat_index = np.where(inside, row * size_y + ky, 0)
    return flat_index, conjugate, inside


@functools.lru_cache(maxsize=16)
def _first_leg_modes(N, lpix, l_edges):
    """First legs ``k1`` that fall in a bin, in the C loop's (row-major) order.

    Returns read-only arrays ``(kx1, ky1, flat_index, bin_index)`` for the stored rfft modes with
    ``l1 = sqrt(kx1**2 + ky1**2) * lpix`` below ``l_edges[-1]`` and in some bin ``(l_k, l_{k+1}]``.
    Only the block ``|kx1|, ky1 <= l_edges[-1] / lpix + 1`` of the rfft array is examined.
    Cached per geometry (the pipeline measures many patches with the same N, size and edges).
    """
    size_y = N // 2 + 1
    half = N // 2
    kmax = int(l_edges[-1] / lpix) + 1
    rows = np.concatenate([np.arange(0, min(kmax, half - 1) + 1),
                           np.arange(N - min(kmax, half), N)])
    kx = np.where(rows < half, rows, rows - N)
    ky = np.arange(0, min(kmax, half) + 1)
    kx1, ky1 = (a.reshape(-1) for a in np.meshgrid(kx, ky, indexing="ij"))
    row1 = np.repeat(rows, ky.size)
    ell1 = np.sqrt((kx1 * kx1 + ky1 * ky1).astype(np.float64)) * lpix
    bins = multipole_bin_index(ell1, np.asarray(l_edges))
    selected = (bins >= 0) & (ell1 < l_edges[-1])
    result = (kx1[selected], ky1[selected], row1[selected] * size_y + ky1[selected], bins[selected])
    for array in result:
        array.flags.writeable = False
    return result
