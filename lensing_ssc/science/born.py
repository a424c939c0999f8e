"""Born-approximation lensing weights of discrete shells (SCIENCE.md §3.1).

kappa(n) = sum_i Wbar_i(zs) delta_i(n), with, for sheet i between chi1 = chi(a_far) > chi2 = chi(a_near),
all distances in **Mpc** (not Mpc/h):

    chi_mid = 0.75 (chi1^4 - chi2^4) / (chi1^3 - chi2^3)        (volume-weighted mean distance)
    Wbar    = W(chi_mid; zs) (chi1 - chi2)
    W(chi)  = 1.5 Om0 (H0/c)^2 (1 + z(chi)) chi max(0, 1 - chi/chi_s),   chi_s = chi(zs)

A sheet whose chi_mid lies at or beyond the source gets weight 0; a sheet straddling zs is not split.
"""
from __future__ import annotations

import hashlib

import numpy as np

from lensing_ssc.core.cosmology import (
    comoving_distance_mpc,
    hubble_over_c_per_mpc,
    redshift_at_comoving_distance_mpc,
)
from lensing_ssc.science.shells import validate_scale_factor_edges


def shell_distances_mpc(cosmo, a_far, a_near):
    """Return ``(chi_far, chi_near, chi_mid)`` [Mpc] of sheets a in [a_far, a_near]; chi_mid volume-weighted."""
    a_far, a_near = validate_scale_factor_edges(a_far, a_near)
    chi1 = comoving_distance_mpc(cosmo, 1.0 / a_far - 1.0)
    chi2 = comoving_distance_mpc(cosmo, 1.0 / a_near - 1.0)
    chi_mid = 0.75 * (chi1**4 - chi2**4) / (chi1**3 - chi2**3)
    return chi1, chi2, chi_mid


def lensing_kernel_per_mpc(cosmo, chi_mpc, zs: float) -> np.ndarray:
    """Continuous lensing efficiency W(chi; zs) [1/Mpc] at distances ``chi_mpc`` [Mpc], 0 at/after the source."""
    if not np.isfinite(zs) or zs <= 0:
        raise ValueError(f"zs must be a positive source redshift, got {zs!r}")
    chi = np.asarray(chi_mpc, dtype=np.float64)
    chi_s = float(comoving_distance_mpc(cosmo, zs))
    z = redshift_at_comoving_distance_mpc(cosmo, chi)
    prefactor = 1.5 * cosmo.Om0 * hubble_over_c_per_mpc(cosmo) ** 2
    return prefactor * (1.0 + z) * chi * np.clip(1.0 - chi / chi_s, 0.0, None)


def born_weights(cosmo, a_far, a_near, zs: float) -> np.ndarray:
    """Dimensionless shell weights Wbar_i(zs) = W(chi_mid_i; zs) dchi_i, shaped like ``a_far``/``a_near``."""
    chi1, chi2, chi_mid = shell_distances_mpc(cosmo, a_far, a_near)
    return lensing_kernel_per_mpc(cosmo, chi_mid, zs) * (chi1 - chi2)


def born_weight_table(cosmo, a_far, a_near, zs_list) -> np.ndarray:
    """Weights for several sources: float64 array of shape (len(zs_list), n_sheets), row k for zs_list[k]."""
    zs_values = np.atleast_1d(np.asarray(zs_list, dtype=np.float64))
    if zs_values.ndim != 1 or zs_values.size == 0:
        raise ValueError(f"zs_list must be a non-empty 1-D sequence of source redshifts, got {zs_list!r}")
    a_far = np.atleast_1d(np.asarray(a_far, dtype=np.float64))
    a_near = np.atleast_1d(np.asarray(a_near, dtype=np.float64))
    return np.stack([born_weights(cosmo, a_far, a_near, zs) for zs in zs_values])


def weights_hash(weights) -> str:
    """SHA-256 hex digest of the weights as little-endian float64 bytes (C order), for FITS headers."""
    data = np.ascontiguousarray(np.asarray(weights, dtype="<f8"))
    return hashlib.sha256(data.tobytes()).hexdigest()
