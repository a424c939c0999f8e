"""Background cosmology: the FlatLambdaCDM model, comoving distances and their inverse.

SCIENCE.md Decision 3 and §2.3/§3.1: distances come from an astropy ``FlatLambdaCDM`` without
radiation (``Tcmb0=0``), by default H0 = 67.74 km/s/Mpc, Om0 = 0.309 (the original LensingSSC values).
Sheet volumes use Mpc/h (the BoxSize unit), lensing weights use Mpc (Appendix A item 2); this module
offers both, clearly named. No MPI, no I/O: the caller logs the warnings of ``check_against_header``.
"""
from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.cosmology import FlatLambdaCDM
from scipy.interpolate import CubicSpline

DEFAULT_H0 = 67.74
DEFAULT_OM0 = 0.309
# Relative tolerance of ``check_against_header``. 1e-3 accepts the 4-digit rounding of the original
# analysis (Om0 0.309 vs the simulation's OmegaM 0.3089: 3.2e-4) and still flags any real mismatch
# (e.g. Om0 0.31 vs 0.30 is 3e-2).
DEFAULT_HEADER_RTOL = 1e-3

# Redshift grid of the chi -> z inversion: uniform in ln(1 + z); 4096 nodes up to z = 1e4 give a
# spline error below 1e-11 in z before the Newton step.
_INVERSION_Z_MAX = 1.0e4
_INVERSION_NODES = 4096


def make_cosmology(H0: float = DEFAULT_H0, Om0: float = DEFAULT_OM0) -> FlatLambdaCDM:
    """Flat LambdaCDM without radiation (Tcmb0 = 0); H0 in km/s/Mpc, Om0 the matter density today."""
    if not np.isfinite(H0) or H0 <= 0:
        raise ValueError(f"H0 must be a positive number in km/s/Mpc, got {H0!r}")
    if not np.isfinite(Om0) or not 0 < Om0 <= 1:
        raise ValueError(f"Om0 must lie in (0, 1], got {Om0!r}")
    return FlatLambdaCDM(H0=H0, Om0=Om0, Tcmb0=0.0)


def _redshift_array(z, name: str = "z") -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if not np.all(np.isfinite(z)) or np.any(z < 0):
        raise ValueError(f"{name} must be finite redshifts >= 0, got {z!r}")
    return z


def comoving_distance_mpc(cosmo: FlatLambdaCDM, z) -> np.ndarray:
    """Line-of-sight comoving distance [Mpc] to redshift(s) ``z`` (same shape as ``z``)."""
    z = _redshift_array(z)
    return np.asarray(cosmo.comoving_distance(z).to_value(u.Mpc), dtype=np.float64)


def comoving_distance_mpch(cosmo: FlatLambdaCDM, z) -> np.ndarray:
    """Line-of-sight comoving distance [Mpc/h] to redshift(s) ``z`` (same shape as ``z``)."""
    return comoving_distance_mpc(cosmo, z) * cosmo.h


def redshift_at_comoving_distance_mpc(cosmo: FlatLambdaCDM, chi_mpc) -> np.ndarray:
    """Redshift at comoving distance(s) ``chi_mpc`` [Mpc] (same shape), inverse of ``comoving_distance_mpc``.

    Deliberately a vectorised inversion (cubic spline of z against chi on a grid uniform in ln(1+z),
    polished by one Newton step) rather than astropy ``z_at_value``, which runs one scalar root search
    per element and, being a minimiser of |chi(z) - chi|, is only ~1e-7 accurate. This agrees with a
    brentq root to 1e-11 relative (tested). Raises ValueError for distances < 0 or beyond chi(z = 1e4).
    """
    chi = np.asarray(chi_mpc, dtype=np.float64)
    z_grid = np.expm1(np.linspace(0.0, np.log1p(_INVERSION_Z_MAX), _INVERSION_NODES))
    chi_grid = comoving_distance_mpc(cosmo, z_grid)
    if not np.all(np.isfinite(chi)) or np.any(chi < 0) or np.any(chi > chi_grid[-1]):
        raise ValueError(
            f"chi_mpc must be comoving distances in [0, {chi_grid[-1]:.1f}] Mpc, got {chi_mpc!r}"
        )
    z = CubicSpline(chi_grid, z_grid)(chi)
    # one Newton step on chi(z) - chi = 0 (dchi/dz = c / H(z)) removes the residual spline error
    dchi_dz = cosmo.hubble_distance.to_value(u.Mpc) * cosmo.inv_efunc(z)
    return z + (chi - comoving_distance_mpc(cosmo, np.maximum(z, 0.0))) / dchi_dz


def hubble_over_c_per_mpc(cosmo: FlatLambdaCDM) -> float:
    """H0 / c [1/Mpc] (2.25956e-4 for H0 = 67.74)."""
    return 1.0 / cosmo.hubble_distance.to_value(u.Mpc)


def check_against_header(
    cosmo: FlatLambdaCDM, omega_m: float, hubble_param: float, rtol: float = DEFAULT_HEADER_RTOL
) -> list[str]:
    """Compare the analysis cosmology with the usmesh header (``OmegaM``, ``HubbleParam`` = h).

    Returns one human-readable warning per parameter whose relative difference from the header value
    exceeds ``rtol`` (empty list when they agree); the caller logs them (Decision 3). See
    ``DEFAULT_HEADER_RTOL`` for the choice of the default.
    """
    if not np.isfinite(rtol) or rtol < 0:
        raise ValueError(f"rtol must be a finite number >= 0, got {rtol!r}")
    warnings = []
    for label, config_value, header_name, header_value in (
        ("Om0", float(cosmo.Om0), "OmegaM", omega_m),
        ("h = H0/100", float(cosmo.h), "HubbleParam", hubble_param),
    ):
        header_value = float(header_value)
        if not np.isfinite(header_value) or header_value <= 0:
            raise ValueError(f"header {header_name} must be a positive number, got {header_value!r}")
        relative = abs(config_value - header_value) / header_value
        if relative > rtol:
            warnings.append(
                f"cosmology mismatch: config {label} = {config_value:.6g} but usmesh header "
                f"{header_name} = {header_value:.6g} (relative difference {relative:.2e} > rtol {rtol:.1e})"
            )
    return warnings
