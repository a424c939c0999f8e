"""Limber prediction of the convergence power spectrum through the same discrete shells as born.py.

The pipeline builds kappa(n) = sum_i Wbar_i delta_i(n), where delta_i is the 3-D overdensity averaged
over the shell's pixel volume, i.e. along the line of sight with weight chi^2:

    delta_i(n) = int_{chi2}^{chi1} dchi chi^2 delta(chi n, z(chi)) / V'_i,   V'_i = (chi1^3 - chi2^3) / 3.

In the Limber approximation (k = (ell + 1/2)/chi, LoVerde & Afshordi 2008), a projection with radial
weight q(chi) has C_ell = int dchi q(chi)^2 / chi^2 P(k, z(chi)); with q = chi^2 / V'_i this gives

    C^i_ell = int_{chi2}^{chi1} dchi chi^2 P((ell + 1/2)/chi, z(chi)) / V'_i^2
            ~ P((ell + 1/2)/chi_i) / (chi_i^2 dchi_i)          (thin shell),

and non-overlapping shells are uncorrelated in Limber, so C^kappa_ell = sum_i Wbar_i^2 C^i_ell.

Units: the Wbar_i are dimensionless (computed in Mpc, §3.1). C^i_ell is evaluated with distances in
**Mpc/h**, k in **h/Mpc** and P in **(Mpc/h)^3** (the units of ``pk_of_k_z``); the ratio is
dimensionless, so no h enters the result. For a single shell Limber needs ell >> chi_i/dchi_i
(15-45 for the 0.01-in-a shells of §2.1); below that C^i_ell is only approximate.
"""
from __future__ import annotations

import os

import healpy as hp
import numpy as np
from astropy.io import fits

from lensing_ssc.core.cosmology import redshift_at_comoving_distance_mpc
from lensing_ssc.science.born import born_weights, shell_distances_mpc

# Pixel-window tables of the Debian package healpy-data (flat layout pixel_window_nNNNN.fits).
DEBIAN_HEALPY_DATA = "/usr/share/healpy/data"


def _ell_array(ell) -> np.ndarray:
    ell = np.asarray(ell, dtype=np.float64)
    if ell.ndim > 1 or not np.all(np.isfinite(ell)) or np.any(ell < 0):
        raise ValueError(f"ell must be a scalar or 1-D array of finite multipoles >= 0, got {ell!r}")
    return np.atleast_1d(ell)


def limber_cl_shells(ell, cosmo, a_far, a_near, pk_of_k_z, n_quad: int = 4) -> np.ndarray:
    """Limber angular power C^i_ell of each shell-averaged overdensity, shape (n_sheets, n_ell).

    ``ell``: multipoles (scalar or 1-D); ``a_far``, ``a_near``: 1-D scale-factor edges of the sheets;
    ``pk_of_k_z(k, z)``: 3-D matter power [(Mpc/h)^3], called with ``k`` a 1-D float64 array [h/Mpc]
    of shape (n_ell,) and ``z`` a Python float, returning shape (n_ell,). The radial integral over each
    shell uses ``n_quad``-point Gauss-Legendre quadrature in chi.
    """
    ell = _ell_array(ell)
    if int(n_quad) != n_quad or n_quad < 1:
        raise ValueError(f"n_quad must be a positive integer, got {n_quad!r}")
    chi1_mpc, chi2_mpc, _ = shell_distances_mpc(cosmo, np.atleast_1d(a_far), np.atleast_1d(a_near))
    if chi1_mpc.ndim != 1:
        raise ValueError(f"a_far and a_near must be 1-D, got shape {chi1_mpc.shape}")
    nodes, node_weights = np.polynomial.legendre.leggauss(int(n_quad))
    half_mpc = 0.5 * (chi1_mpc - chi2_mpc)
    chi_nodes_mpc = (0.5 * (chi1_mpc + chi2_mpc))[:, None] + half_mpc[:, None] * nodes[None, :]
    z_nodes = redshift_at_comoving_distance_mpc(cosmo, chi_nodes_mpc)
    chi_nodes = chi_nodes_mpc * cosmo.h  # Mpc/h
    dchi_nodes = (half_mpc * cosmo.h)[:, None] * node_weights[None, :]  # Mpc/h
    radial_volume = ((chi1_mpc * cosmo.h) ** 3 - (chi2_mpc * cosmo.h) ** 3) / 3.0  # (Mpc/h)^3 per sr

    cl = np.zeros((chi1_mpc.size, ell.size))
    for i in range(chi1_mpc.size):
        for chi, dchi, z in zip(chi_nodes[i], dchi_nodes[i], z_nodes[i]):
            k = (ell + 0.5) / chi
            power = np.asarray(pk_of_k_z(k, float(z)), dtype=np.float64)
            if power.shape != k.shape:
                raise ValueError(
                    f"pk_of_k_z must return an array shaped like k {k.shape}, got shape {power.shape}"
                )
            cl[i] += dchi * chi**2 * power
        cl[i] /= radial_volume[i] ** 2
    return cl


def limber_cl_kappa(ell, cosmo, a_far, a_near, zs: float, pk_of_k_z, n_quad: int = 4) -> np.ndarray:
    """Limber convergence power C^kappa_ell = sum_i Wbar_i(zs)^2 C^i_ell, shape (n_ell,) (dimensionless).

    Same discrete shells and weights as ``born.born_weights``; sheets with zero weight are skipped.
    Arguments as in ``limber_cl_shells``.
    """
    a_far = np.atleast_1d(np.asarray(a_far, dtype=np.float64))
    a_near = np.atleast_1d(np.asarray(a_near, dtype=np.float64))
    weights = born_weights(cosmo, a_far, a_near, zs)
    used = weights > 0
    if not np.any(used):
        return np.zeros(_ell_array(ell).size)
    shell_cl = limber_cl_shells(ell, cosmo, a_far[used], a_near[used], pk_of_k_z, n_quad)
    return weights[used] ** 2 @ shell_cl


def shot_noise_cl(weights, mean_particles_per_pixel, npix: int) -> float:
    """White (ell-independent) shot-noise power of kappa = sum_i w_i delta_i for Poisson-sampled shells.

    With equal-mass particles, delta_i(p) = N_p / nbar_i - 1 in each of ``npix`` pixels, where N_p is
    Poisson with mean nbar_i = ``mean_particles_per_pixel[i]`` (= (NC/L)^3 V_pix,i, see
    ``shells.pixel_volume``). Pixels are independent with variance 1/nbar_i, so each shell contributes
    white noise C^i = Omega_pix / nbar_i = 4 pi / (npix nbar_i) (= 4 pi / N_shell,i, independent of the
    resolution) and C^kappa_shot = (4 pi / npix) sum_i w_i^2 / nbar_i. Shells with w_i = 0 are ignored.
    This noise lives on the pixels, so it is *not* multiplied by the pixel window.
    """
    if int(npix) != npix or npix <= 0:
        raise ValueError(f"npix must be a positive integer, got {npix!r}")
    w = np.asarray(weights, dtype=np.float64)
    nbar = np.asarray(mean_particles_per_pixel, dtype=np.float64)
    if w.shape != nbar.shape or w.ndim != 1:
        raise ValueError(
            f"weights and mean_particles_per_pixel must be 1-D of equal length, got {w.shape} and {nbar.shape}"
        )
    used = w != 0
    if not np.all(np.isfinite(nbar[used])) or np.any(nbar[used] <= 0):
        raise ValueError(f"mean_particles_per_pixel must be > 0 for every weighted shell, got {nbar!r}")
    return float(4.0 * np.pi / npix * np.sum(w[used] ** 2 / nbar[used]))


def pixel_window(nside: int, lmax: int, datapath: str | None = None) -> np.ndarray:
    """HEALPix pixel window function W_ell (ell = 0..lmax, shape (lmax+1,)), the tabulated HEALPix one.

    A map of pixel-averaged field values has C^map_ell ~ W_ell^2 C_ell (+ the white shot noise).
    The table ``pixel_window_n{nside:04d}.fits`` is read from ``datapath`` if given, else from the
    Debian package ``healpy-data`` (``/usr/share/healpy/data``, works offline) when installed, else
    through ``healpy.pixwin``, which downloads it into the astropy cache (needs network once).
    """
    if not hp.isnsideok(nside, nest=True):
        raise ValueError(f"nside must be a power of 2, got {nside!r}")
    if int(lmax) != lmax or lmax < 0:
        raise ValueError(f"lmax must be an integer >= 0, got {lmax!r}")
    directory = datapath if datapath is not None else DEBIAN_HEALPY_DATA
    table = os.path.join(directory, f"pixel_window_n{int(nside):04d}.fits")
    if os.path.isfile(table):
        window = fits.getdata(table).field(0)  # same column healpy.pixwin returns
    elif datapath is not None:
        raise ValueError(f"datapath {datapath!r} has no pixel window table {os.path.basename(table)}")
    else:
        window = hp.pixwin(int(nside))
    if window.size <= lmax:
        raise ValueError(f"lmax must be < {window.size} for the nside {nside} pixel window, got {lmax}")
    return np.asarray(window[: int(lmax) + 1], dtype=np.float64)
