"""Minkowski functionals of a signal-to-noise map, the original's own estimator (SCIENCE.md §6.4).

With ``gy, gx = np.gradient(nu)``, ``hyy = d/dy gy``, ``hxy = d/dy gx``, ``hxx = d/dx gx`` (pixel
units; central differences, one-sided at the edges), ``Npix = nu.size``, edges ``e_k`` and
``dnu_k = e_{k+1} - e_k``, and the strict bins ``e_k < nu < e_{k+1}``:

* ``V0[k] = #(nu > e_k) / Npix``;
* ``V1[k] = sum_bin sqrt(gx^2 + gy^2) / (4 dnu_k Npix)``;
* ``V2[k] = sum_bin (2 gx gy hxy - gx^2 hyy - gy^2 hxx) / (gx^2 + gy^2) / (2 pi dnu_k Npix)``,
  a pixel with zero gradient contributing 0;
* ``sigma1 = sqrt(mean(gx^2 + gy^2))`` (gradient rms, pixel units).

The map is swept once in row blocks (with a 2-row halo for the second derivatives) so the gradient,
Hessian and weight arrays stay in cache; the same sweep yields the level counts of
:func:`.pdf.threshold_levels`, from which V0 and the PDF follow. The derivatives reproduce
``np.gradient`` bit for bit up to an exact factor 2 (:func:`doubled_gradient_rows`,
:func:`doubled_gradient_columns`).
"""
from typing import NamedTuple, Optional

import numpy as np

from .binning import validate_edges
from .pdf import exceedance_counts, level_count, threshold_levels

#: Output rows per block of the sweep.
BLOCK_ROWS = 32


class MinkowskiSweep(NamedTuple):
    """Everything one sweep over a nu map yields (arrays are float64 unless stated)."""

    v0: Optional[np.ndarray]  # (K,), None when functionals were not requested
    v1: Optional[np.ndarray]  # (K,)
    v2: Optional[np.ndarray]  # (K,)
    sigma1: float  # gradient rms [1/pixel]
    level_counts: np.ndarray  # (2K + 3,) int64, pixels per level of pdf.threshold_levels


def minkowski_functionals(nu_map, bins):
    """V0, V1, V2 of ``nu_map`` in the threshold bins, and the gradient rms sigma1.

    Parameters
    ----------
    nu_map : array_like, shape (N0, N1), N0, N1 >= 2
        Finite signal-to-noise map (dimensionless; derivatives in pixel units).
    bins : array_like, shape (nbins + 1,)
        Strictly increasing thresholds, e.g. ``linspace(-4, 4, 9)``.

    Returns
    -------
    (v0, v1, v2, sigma1)
        Three float64 arrays of shape (nbins,) (per pixel, not per steradian) and a float.
    """
    edges = validate_edges(bins, "bins")
    nu = np.ascontiguousarray(nu_map, dtype=np.float64)
    if nu.ndim != 2 or min(nu.shape) < 2:
        raise ValueError(f"nu_map: expected a 2-d array of at least 2 x 2 pixels, got shape {nu.shape}")
    if not np.isfinite(nu).all():
        raise ValueError("nu_map: expected finite values, found NaN or inf")
    sweep = minkowski_sweep(nu, edges)
    return sweep.v0, sweep.v1, sweep.v2, sweep.sigma1


def minkowski_sweep(nu: np.ndarray, edges: np.ndarray, functionals: bool = True) -> MinkowskiSweep:
    """One blocked pass over ``nu``: sigma1, level counts and (optionally) V0, V1, V2.

    No input validation: ``nu`` is a finite, C-contiguous float64 (N0, N1) array with
    N0, N1 >= 2 and ``edges`` validated edges. With ``functionals=False`` only the gradient is
    computed (for sigma1) and v0, v1, v2 are None.

    The derivatives are kept as ``D = 2 * np.gradient`` (no halving pass) and the Hessian as
    ``H = 4 * hessian``; every product and quotient then carries an exact power-of-two factor
    (16 in the curvature numerator, 4 in |grad|^2), removed from the per-bin sums at the end, so the
    per-pixel terms are bit for bit the original's times that factor.
    """
    n0 = nu.shape[0]
    nlevels = level_count(edges)
    doubled_power = 0.0  # sum of |D|^2 = 4 |grad|^2
    counts = np.zeros(nlevels, dtype=np.int64)
    # Per-level sums of |D| = 2 |grad| and of 4 x the curvature term; level 2k + 2 is the strict
    # bin e_k < nu < e_{k+1}.
    perimeter = np.zeros(nlevels)
    genus = np.zeros(nlevels)
    for r0 in range(0, n0, BLOCK_ROWS):
        r1 = min(r0 + BLOCK_ROWS, n0)
        # First derivatives on rows [g0, g1) (core +- 1); dy there needs nu rows [a, b) (core +- 2).
        g0, g1 = max(r0 - 1, 0), min(r1 + 1, n0)
        a, b = max(r0 - 2, 0), min(r1 + 2, n0)
        dy_ext = doubled_gradient_rows(nu[a:b])[g0 - a:g1 - a]
        dx_ext = doubled_gradient_columns(nu[g0:g1])
        core = slice(r0 - g0, r1 - g0)
        dx, dy = dx_ext[core], dy_ext[core]
        dx2 = dx * dx
        dy2 = dy * dy
        norm2 = dx2 + dy2
        doubled_power += norm2.sum()
        level = threshold_levels(nu[r0:r1], edges).reshape(-1).astype(np.intp)
        counts += np.bincount(level, minlength=nlevels)
        if not functionals:
            continue
        hyy = doubled_gradient_rows(dy_ext)[core]
        hxy = doubled_gradient_rows(dx_ext)[core]
        hxx = doubled_gradient_columns(dx)
        # 16 (2 gx gy hxy - gx^2 hyy - gy^2 hxx), in the original's order of operations.
        curvature = dx * dy
        curvature *= hxy
        curvature *= 2.0
        curvature -= np.multiply(dx2, hyy, out=hyy)
        curvature -= np.multiply(dy2, hxx, out=hxx)
        with np.errstate(invalid="ignore"):
            np.divide(curvature, norm2, out=curvature)
        block_genus = np.bincount(level, weights=curvature.reshape(-1), minlength=nlevels)
        if not np.isfinite(block_genus).all():  # 0/0 where the gradient vanishes counts as 0
            curvature[norm2 == 0] = 0.0
            block_genus = np.bincount(level, weights=curvature.reshape(-1), minlength=nlevels)
        genus += block_genus
        gradient_norm = np.sqrt(norm2, out=norm2)
        perimeter += np.bincount(level, weights=gradient_norm.reshape(-1), minlength=nlevels)
    npix = nu.size
    sigma1 = float(np.sqrt(doubled_power / 4.0 / npix))
    if not functionals:
        return MinkowskiSweep(None, None, None, sigma1, counts)
    dnu = np.diff(edges)
    v0 = exceedance_counts(counts)[:-1] / npix
    v1 = perimeter[2:-1:2] / 2.0 / (4.0 * dnu * npix)
    v2 = genus[2:-1:2] / 4.0 / (2.0 * np.pi * dnu * npix)
    return MinkowskiSweep(v0, v1, v2, sigma1, counts)


def doubled_gradient_rows(f: np.ndarray) -> np.ndarray:
    """``2 * np.gradient(f, axis=0)`` for a C-contiguous 2-d float64 array (>= 2 rows), exactly.

    ``f[i+1] - f[i-1]`` inside, ``2 (f[1] - f[0])`` and ``2 (f[-1] - f[-2])`` on the first and
    last rows; computed on the flattened array so every operation is one contiguous sweep.
    """
    n1 = f.shape[1]
    flat = f.reshape(-1)
    out = np.empty_like(f)
    np.subtract(flat[2 * n1:], flat[:-2 * n1], out=out.reshape(-1)[n1:-n1])
    np.subtract(f[1], f[0], out=out[0])
    out[0] *= 2.0
    np.subtract(f[-1], f[-2], out=out[-1])
    out[-1] *= 2.0
    return out


def doubled_gradient_columns(f: np.ndarray) -> np.ndarray:
    """``2 * np.gradient(f, axis=1)`` for a C-contiguous 2-d float64 array (>= 2 columns), exactly.

    The flattened difference ``f[j+1] - f[j-1]`` is right everywhere except the first and last
    column of each row, which get twice the one-sided differences afterwards.
    """
    flat = f.reshape(-1)
    out = np.empty_like(f)
    np.subtract(flat[2:], flat[:-2], out=out.reshape(-1)[1:-1])
    np.subtract(f[:, 1], f[:, 0], out=out[:, 0])
    out[:, 0] *= 2.0
    np.subtract(f[:, -1], f[:, -2], out=out[:, -1])
    out[:, -1] *= 2.0
    return out
