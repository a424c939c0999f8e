"""Analytic super-sample covariance (SSC) of a patch's convergence power spectrum: the theory overlay of
the ensemble stage (SCIENCE.md §10; optional extra ``lensing_ssc[theory]``, i.e. pyccl >= 3, imported
inside the functions).

Model (response approach, Takada & Hu 2013, as implemented by pyccl):

    Var_SSC(l) = int dchi q(chi)^4 / chi^4 [dP(k, a)/d delta_b]^2 sigma_B^2(chi),   k = (l + 1/2)/chi

* q(chi): convergence kernel of one source plane at ``zs`` (``pyccl.CMBLensingTracer(z_source=zs)``, which
  is exactly the Dirac source n(z) of our kappa maps; only the name says "CMB").
* dP/d delta_b: halo-model response ``pyccl.halos.halomod_Tk3D_SSC`` (tree-level growth and dilation
  terms on the linear P(k), plus the one-halo term): mass function Tinker et al. 2008, halo bias Tinker
  et al. 2010, NFW profiles with the Duffy et al. 2008 concentration, all for M_200m.
* sigma_B^2(chi) [Mpc]: variance of the projected linear density over the patch, for a disc of the
  patch's solid angle (``pyccl.sigma2_B_disc``; our patches are squares of side S: area S^2 deg^2,
  fsky = S^2 / 41253; the square's window is replaced by the disc's).
* C_l (for reference and for ratios): Limber, halofit (Takahashi et al. 2012) non-linear P(k).
* Linear P(k): Eisenstein & Hu 1998 transfer function normalised to sigma8 (no Boltzmann code needed).

Parameters: H0 and Om0 from the config (the original runs: 67.74, 0.309); the others are module
defaults from the CLASS script of the original study (SCIENCE.md §10): omega_b = Ob h^2 = 0.02247,
n_s = 0.96824, massless neutrinos; its A_s = 2.10732e-9 corresponds to sigma8 = 0.822 (computed once with
CAMB 2.0.5 for those parameters; pyccl cannot normalise an analytic transfer function by A_s).

Band powers: the measured spectrum is averaged over 8 log bins in l; the SSC variance is evaluated at
the bin centres, which is exact to first order for a response that is smooth across a bin.

Families: the first family (e.g. the 5 Gpc/h "bigbox") is taken to contain every super-sample mode;
the second lacks those with k < 2 pi / L (L its periodic box side) or, without L, all of them. The
SSC variance the second family lacks is the same integral with sigma_B^2 restricted to those modes
(``sigma2_b_long_modes``); the predicted variance ratio first/second is
``1 + Var_SSC,missing / Var_second,measured`` (``predicted_variance_ratio``).

Units: l dimensionless; C_l dimensionless (convergence); variances of C_l dimensionless; k in 1/Mpc;
distances in Mpc (pyccl's units, not Mpc/h); sigma_B^2 in Mpc (a projected variance per unit length).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

#: Defaults for the parameters the config does not set (the original study's CLASS script, SCIENCE.md §10).
OMEGA_B_H2 = 0.02247
N_S = 0.96824
SIGMA8 = 0.822
#: Lower end [1/Mpc] of the long-mode integral; below it P(k) k^2 adds < 1e-6 of sigma_B^2.
K_FLOOR = 1e-6
MODEL = ("Var_SSC(l) = int dchi q^4/chi^4 (dP/d delta_b)^2 sigma_B^2(chi), Limber, k = (l+1/2)/chi; "
         "response: pyccl.halos.halomod_Tk3D_SSC (Tinker08 mass function, Tinker10 bias, NFW with Duffy08 "
         "concentration, M200m); sigma_B^2: pyccl.sigma2_B_disc for a disc of the patch area; kernel: one source "
         "plane at zs (pyccl.CMBLensingTracer); linear P(k): Eisenstein & Hu, sigma8-normalised; C_l: halofit")
APPROXIMATIONS = ("square patch -> disc of equal area; band powers -> values at the bin centres; periodic box -> "
                  "no modes with |k| < 2 pi/L (isotropic cut, Limber); first family has every super-sample mode")


def _pyccl():
    try:
        import pyccl
    except ImportError:
        raise ImportError("the SSC theory overlay needs pyccl >= 3: install lensing_ssc[theory] "
                          "(pip install -e '.[theory]' in the repository, or pip install pyccl)") from None
    return pyccl


@dataclass(frozen=True)
class Grids:
    """Sampling of the pyccl integrands: ``n_a`` scale factors from the source to today, ``n_k`` log
    wavenumbers in [1e-4, 1e2] 1/Mpc for the response, ``n_k_long`` log wavenumbers in the long-mode
    sigma_B^2 integral. The defaults agree with twice finer grids to 2e-4 (measured at zs = 1, l 350-2625;
    about 0.7 s for 8 multipoles); the tests' 12/32/256 to 1 %."""

    n_a: int = 64
    n_k: int = 128
    n_k_long: int = 1024


def cosmology(H0: float, Om0: float, omega_b: float = OMEGA_B_H2, n_s: float = N_S, sigma8: float = SIGMA8):
    """Flat LambdaCDM ``pyccl.Cosmology``: ``H0`` [km/s/Mpc], ``Om0`` (baryons + CDM), ``omega_b`` = Ob h^2,
    ``n_s``, ``sigma8``; Eisenstein & Hu linear power, halofit non-linear power, massless neutrinos."""
    ccl = _pyccl()
    h = H0 / 100.0
    Ob = omega_b / h ** 2
    if not 0 < Ob < Om0:
        raise ValueError(f"cosmology: Om0 = {Om0} must exceed the baryon density Ob = omega_b/h^2 = {Ob:.4f}")
    return ccl.Cosmology(Omega_c=Om0 - Ob, Omega_b=Ob, h=h, n_s=n_s, sigma8=sigma8,
                         transfer_function="eisenstein_hu", matter_power_spectrum="halofit")


def patch_sky_fraction(patch_size_deg: float) -> float:
    """Sky fraction of a square patch of side ``patch_size_deg`` [deg] (flat area S^2 deg^2 / 41253 deg^2)."""
    if not patch_size_deg > 0:
        raise ValueError(f"patch_size_deg: expected a positive side in degrees, got {patch_size_deg}")
    return float(np.radians(patch_size_deg) ** 2 / (4 * np.pi))


def box_k_min(cosmo, box_mpc_h: float) -> float:
    """Fundamental wavenumber 2 pi / L [1/Mpc] of a periodic box of side ``box_mpc_h`` [Mpc/h]."""
    return 2 * np.pi * cosmo["h"] / box_mpc_h


def sigma2_b_disc(cosmo, a: np.ndarray, fsky: float) -> np.ndarray:
    """sigma_B^2(a) [Mpc] of a disc covering ``fsky``: ``pyccl.sigma2_B_disc`` at scale factors ``a`` (n,)."""
    ccl = _pyccl()
    return np.asarray(ccl.sigma2_B_disc(cosmo, a_arr=np.asarray(a, dtype=float), fsky=fsky), dtype=float)


def sigma2_b_long_modes(cosmo, a: np.ndarray, fsky: float, k_max: float, n_k: int = Grids.n_k_long) -> np.ndarray:
    """The part of ``sigma2_b_disc`` from modes k < ``k_max`` [1/Mpc] only, (n,) in Mpc:
    int_{K_FLOOR}^{k_max} k dk/(2 pi) P_L(k, a) [2 J1(k R)/(k R)]^2, R = chi(a) arccos(1 - 2 fsky) (pyccl's
    disc radius), trapezoid in ln k on ``n_k`` points."""
    from scipy.integrate import trapezoid
    from scipy.special import j1
    ccl = _pyccl()
    a = np.atleast_1d(np.asarray(a, dtype=float))
    k = np.geomspace(K_FLOOR, k_max, n_k)
    radius = ccl.comoving_radial_distance(cosmo, a) * np.arccos(1 - 2 * fsky)
    out = np.empty(a.shape)
    for i, (scale, r) in enumerate(zip(a, radius)):
        x = k * r
        window = np.ones_like(x) if r == 0 else (2 * j1(x) / x) ** 2  # r = 0 today (a = 1)
        out[i] = trapezoid(k ** 2 / (2 * np.pi) * ccl.linear_matter_power(cosmo, k, scale) * window, np.log(k))
    return out


def ssc_trispectrum(cosmo, a: np.ndarray, n_k: int = Grids.n_k):
    """Halo-model SSC trispectrum dP/d delta_b (k1) x dP/d delta_b (k2) (``pyccl.Tk3D``) on scale factors
    ``a`` and ``n_k`` log wavenumbers in [1e-4, 1e2] 1/Mpc (see the module docstring for the ingredients)."""
    ccl = _pyccl()
    mass = ccl.halos.MassDef200m
    calculator = ccl.halos.HMCalculator(mass_function=ccl.halos.MassFuncTinker08(mass_def=mass),
                                        halo_bias=ccl.halos.HaloBiasTinker10(mass_def=mass), mass_def=mass)
    profile = ccl.halos.HaloProfileNFW(mass_def=mass, concentration=ccl.halos.ConcentrationDuffy08(mass_def=mass),
                                       fourier_analytic=True)
    return ccl.halos.halomod_Tk3D_SSC(cosmo, calculator, profile, a_arr=np.asarray(a, dtype=float),
                                      lk_arr=np.log(np.geomspace(1e-4, 1e2, n_k)), use_log=True)


def convergence_cl(cosmo, zs: float, ell: np.ndarray) -> np.ndarray:
    """C_l (dimensionless) of the convergence of one source plane at ``zs``, halofit, Limber; (n,)."""
    ccl = _pyccl()
    tracer = ccl.CMBLensingTracer(cosmo, z_source=zs)
    return np.asarray(ccl.angular_cl(cosmo, tracer, tracer, np.asarray(ell, dtype=float)), dtype=float)


def ssc_variance(cosmo, zs: float, ell: np.ndarray, sigma2_b: Tuple[np.ndarray, np.ndarray], trispectrum) -> np.ndarray:
    """Var_SSC(l) of C_l (dimensionless), the diagonal of ``pyccl.covariances.angular_cl_cov_SSC`` for the
    source plane at ``zs``, multipoles ``ell`` (n,), ``sigma2_b`` = (a (m,), sigma_B^2(a) (m,) [Mpc]; it
    carries the footprint) and the SSC ``trispectrum``."""
    ccl = _pyccl()
    tracer = ccl.CMBLensingTracer(cosmo, z_source=zs)
    ell = np.atleast_1d(np.asarray(ell, dtype=float))
    covariance = ccl.covariances.angular_cl_cov_SSC(cosmo, tracer, tracer, ell=ell, t_of_kk_a=trispectrum,
                                                    sigma2_B=tuple(np.asarray(s, dtype=float) for s in sigma2_b))
    return np.diag(np.atleast_2d(covariance)).copy()


def predicted_variance_ratio(ssc_missing: np.ndarray, measured_variance: np.ndarray) -> np.ndarray:
    """Predicted Var(first)/Var(second) = 1 + Var_SSC,missing / Var_second,measured, per bin; both (n,) in
    the same units (here C_l^2, dimensionless)."""
    ssc_missing, measured_variance = np.asarray(ssc_missing, float), np.asarray(measured_variance, float)
    if ssc_missing.shape != measured_variance.shape:
        raise ValueError(f"measured_variance: shape {measured_variance.shape} differs from the SSC variance's "
                         f"{ssc_missing.shape}; expected one value per multipole bin")
    if not np.all(measured_variance > 0):
        raise ValueError("measured_variance: expected positive variances")
    return 1.0 + ssc_missing / measured_variance


@dataclass(frozen=True)
class SSCPrediction:
    """The theory of one (zs, patch side): multipoles ``ell`` (n,), model ``cl`` (n,), SSC variance of C_l
    from all modes ``ssc_variance`` (n,) and from the modes the second family lacks ``ssc_variance_missing``
    (n,), both dimensionless; scale factors ``a`` (m,) with ``sigma2_b`` and ``sigma2_b_missing`` (m,) [Mpc];
    ``fsky``; ``attrs`` describing the model (for the HDF5 output)."""

    ell: np.ndarray
    cl: np.ndarray
    ssc_variance: np.ndarray
    ssc_variance_missing: np.ndarray
    a: np.ndarray
    sigma2_b: np.ndarray
    sigma2_b_missing: np.ndarray
    fsky: float
    attrs: Dict[str, object]


def predict_power_spectrum_ssc(H0: float, Om0: float, zs: float, ell: np.ndarray, patch_size_deg: float,
                               box_mpc_h: Optional[float] = None, grids: Grids = Grids()) -> SSCPrediction:
    """SSC of the convergence power spectrum of a square patch of side ``patch_size_deg`` [deg] at the
    multipoles ``ell`` (bin centres) for the source plane ``zs``; ``box_mpc_h`` [Mpc/h]: periodic box of
    the second family (its missing modes are k < 2 pi/L), None: it lacks every super-sample mode."""
    ell = np.atleast_1d(np.asarray(ell, dtype=float))
    if not zs > 0:
        raise ValueError(f"zs: expected a positive source redshift, got {zs}")
    if ell.ndim != 1 or not np.all(ell > 1):
        raise ValueError(f"ell: expected multipoles > 1 in a 1-d array, got {ell}")
    if box_mpc_h is not None and not box_mpc_h > 0:
        raise ValueError(f"box_mpc_h: expected a positive box side [Mpc/h] or None, got {box_mpc_h}")
    ccl = _pyccl()
    cosmo = cosmology(H0, Om0)
    fsky = patch_sky_fraction(patch_size_deg)
    a = np.linspace(1.0 / (1.0 + zs), 1.0, grids.n_a)
    trispectrum = ssc_trispectrum(cosmo, a, grids.n_k)
    sigma2 = sigma2_b_disc(cosmo, a, fsky)
    if box_mpc_h is None:
        sigma2_missing = sigma2
    else:
        sigma2_missing = sigma2_b_long_modes(cosmo, a, fsky, box_k_min(cosmo, box_mpc_h), grids.n_k_long)
    full = ssc_variance(cosmo, zs, ell, (a, sigma2), trispectrum)
    missing = full if box_mpc_h is None else ssc_variance(cosmo, zs, ell, (a, sigma2_missing), trispectrum)
    attrs = {
        "model": MODEL, "approximations": APPROXIMATIONS, "pyccl_version": ccl.__version__,
        "H0": H0, "Om0": Om0, "omega_b": OMEGA_B_H2, "n_s": N_S, "sigma8": SIGMA8, "zs": zs,
        "patch_size_deg": patch_size_deg, "fsky": fsky,
        "second_family_box_mpc_h": np.nan if box_mpc_h is None else float(box_mpc_h),
        "missing_modes": "every mode" if box_mpc_h is None else f"k < 2 pi/L = {box_k_min(cosmo, box_mpc_h):.5g} 1/Mpc",
        "units": "ell dimensionless; cl, ssc_variance* dimensionless (C_l, not l(l+1)C_l/2pi); a scale factor; "
                 "sigma2_b* Mpc (projected variance per unit length, pyccl convention)",
    }
    return SSCPrediction(ell=ell, cl=convergence_cl(cosmo, zs, ell), ssc_variance=full, ssc_variance_missing=missing,
                         a=a, sigma2_b=sigma2, sigma2_b_missing=sigma2_missing, fsky=fsky, attrs=attrs)


__all__ = ["cosmology", "patch_sky_fraction", "box_k_min", "sigma2_b_disc", "sigma2_b_long_modes", "ssc_trispectrum",
           "convergence_cl", "ssc_variance", "predicted_variance_ratio", "predict_power_spectrum_ssc", "SSCPrediction",
           "Grids", "OMEGA_B_H2", "N_S", "SIGMA8"]
