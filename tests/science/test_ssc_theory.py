"""The analytic SSC of the convergence power spectrum (lensing_ssc.science.ssc_theory, pyccl): sigma_B^2 of
the patch, the proportionality of Var_SSC to sigma_B^2, the size of the response it implies against an
independent numpy estimate, the long-mode (periodic box) part, and the message without pyccl.
Coarse grids (12 scale factors, 32 wavenumbers) keep each pyccl call well under a second."""
import sys

import numpy as np
import pyccl  # the [test] extra installs it (setup.py), as CI does through scripts/bootstrap.sh
import pytest
from scipy.integrate import simpson

from lensing_ssc.science import ssc_theory

H0, OM0, ZS = 67.74, 0.309, 1.0
COARSE = ssc_theory.Grids(n_a=12, n_k=32, n_k_long=256)


@pytest.fixture(scope="module")
def model():
    cosmo = ssc_theory.cosmology(H0, OM0)
    a = np.linspace(1 / (1 + ZS), 1.0, COARSE.n_a)
    return cosmo, a, ssc_theory.ssc_trispectrum(cosmo, a, COARSE.n_k)


def test_sigma2_b_is_positive_and_decreases_with_the_sky_fraction(model):
    cosmo, _, _ = model
    a = np.array([0.55, 0.7, 0.85, 0.95])
    sides = [2.5, 5.0, 10.0, 20.0]  # deg
    fsky = [ssc_theory.patch_sky_fraction(s) for s in sides]
    assert fsky[2] == pytest.approx(100 / 41252.96, rel=1e-6)  # 100 deg^2 of 41253 deg^2
    values = np.array([ssc_theory.sigma2_b_disc(cosmo, a, f) for f in fsky])  # (sides, a)
    assert np.all(values > 0)
    assert np.all(np.diff(values, axis=0) < 0)  # a larger patch averages the density over more modes
    assert np.all(np.diff(values, axis=1) > 0)  # at fixed angle, nearer (larger a) means a smaller disc


def test_long_mode_integral_reproduces_pyccl_with_every_mode_and_grows_with_k_max(model):
    cosmo, a, _ = model
    fsky = ssc_theory.patch_sky_fraction(10.0)
    inner = a[1:-1]
    full = ssc_theory.sigma2_b_disc(cosmo, inner, fsky)
    np.testing.assert_allclose(ssc_theory.sigma2_b_long_modes(cosmo, inner, fsky, 100.0, 1024), full, rtol=2e-3)
    k_box = [ssc_theory.box_k_min(cosmo, side) for side in (5000.0, 625.0, 100.0)]
    assert k_box[1] == pytest.approx(2 * np.pi * 0.6774 / 625.0)
    parts = np.array([ssc_theory.sigma2_b_long_modes(cosmo, inner, fsky, k, COARSE.n_k_long) for k in k_box])
    assert np.all(np.diff(parts, axis=0) > 0) and np.all(parts[-1] < full)
    assert np.all(parts[0] < 0.01 * full)  # a 5 Gpc/h box misses almost nothing of a 10-degree patch


def test_ssc_variance_is_proportional_to_sigma2_b(model):
    cosmo, a, trispectrum = model
    ell = np.array([300.0, 1000.0, 3000.0])
    small, large = ssc_theory.patch_sky_fraction(5.0), ssc_theory.patch_sky_fraction(10.0)
    s_small, s_large = (ssc_theory.sigma2_b_disc(cosmo, a, f) for f in (small, large))
    v_large = ssc_theory.ssc_variance(cosmo, ZS, ell, (a, s_large), trispectrum)
    # linear in sigma_B^2 ...
    np.testing.assert_allclose(ssc_theory.ssc_variance(cosmo, ZS, ell, (a, 3 * s_large), trispectrum),
                               3 * v_large, rtol=1e-6)
    # ... so the ratio for two patch sizes is a kernel-weighted mean of the sigma_B^2 ratio along the line
    # of sight: within its range over 0 < chi < chi_s, and clearly above 1 (a smaller patch, more SSC).
    ratio = ssc_theory.ssc_variance(cosmo, ZS, ell, (a, s_small), trispectrum) / v_large
    pointwise = s_small / s_large
    assert np.all((ratio >= pointwise.min()) & (ratio <= pointwise.max())), (ratio, pointwise)
    assert np.all(ratio > 2.0)


def test_the_response_implied_by_pyccl_is_the_known_2_to_3(model):
    """Var_SSC = R^2 sigma_b,eff^2 C_l^2 with sigma_b,eff^2 C_l^2 = int dchi q^4/chi^4 P^2 sigma_B^2, computed
    here with an analytic kernel and numpy; the effective response R = d ln C_l / d delta_b of the weak-
    lensing power spectrum is ~2-3 at l 100-3000 (halo-model response, e.g. Takada & Hu 2013)."""
    cosmo, a, trispectrum = model
    ell = np.geomspace(100.0, 3000.0, 5)
    fsky = ssc_theory.patch_sky_fraction(10.0)
    sigma2 = ssc_theory.sigma2_b_disc(cosmo, a, fsky)
    variance = ssc_theory.ssc_variance(cosmo, ZS, ell, (a, sigma2), trispectrum)
    # independent pieces: q = 3/2 Om0 (H0/c)^2 chi (chi_s - chi)/(chi_s a); P_nl from pyccl; trapezoids
    scale = np.linspace(a[0] + 1e-4, 1 - 1e-4, 400)
    chi = pyccl.comoving_radial_distance(cosmo, scale)
    chi_s = pyccl.comoving_radial_distance(cosmo, 1 / (1 + ZS))
    q = 1.5 * OM0 * (H0 / 299792.458) ** 2 * chi * (chi_s - chi) / (chi_s * scale)
    s2 = np.interp(scale, a, sigma2)
    cl, weight = [], []
    for l in ell:
        power = np.array([pyccl.nonlin_matter_power(cosmo, (l + 0.5) / x, s) for x, s in zip(chi, scale)])
        cl.append(simpson((q ** 2 / chi ** 2 * power)[::-1], x=chi[::-1]))
        weight.append(simpson((q ** 4 / chi ** 4 * power ** 2 * s2)[::-1], x=chi[::-1]))
    np.testing.assert_allclose(cl, ssc_theory.convergence_cl(cosmo, ZS, ell), rtol=0.01)
    response = np.sqrt(variance / np.array(weight))
    assert np.all((response > 1.5) & (response < 4.0)), response
    sigma_b_eff = np.sqrt(np.array(weight)) / np.array(cl)
    assert np.all((sigma_b_eff > 0.005) & (sigma_b_eff < 0.05)), sigma_b_eff  # ~2 % for 100 deg^2 at zs = 1


def test_prediction_for_a_periodic_box_and_without_one():
    ell = np.array([350.0, 1100.0, 2600.0])
    every = ssc_theory.predict_power_spectrum_ssc(H0, OM0, ZS, ell, 10.0, None, COARSE)
    box = ssc_theory.predict_power_spectrum_ssc(H0, OM0, ZS, ell, 10.0, 625.0, COARSE)
    assert every.fsky == pytest.approx(ssc_theory.patch_sky_fraction(10.0))
    np.testing.assert_array_equal(every.ssc_variance_missing, every.ssc_variance)
    np.testing.assert_allclose(box.ssc_variance, every.ssc_variance, rtol=1e-12)
    share = box.ssc_variance_missing / box.ssc_variance
    assert np.all((share > 0.03) & (share < 0.5)), share  # the tiled box keeps most super-sample modes
    assert box.attrs["second_family_box_mpc_h"] == 625.0 and np.isnan(every.attrs["second_family_box_mpc_h"])
    # the model C_l: l(l+1)C_l/2pi at zs = 1 within 15 % of CLASS-halofit's 3.0e-5 / 7.3e-5 (SCIENCE.md §11.2)
    band = ell * (ell + 1) * every.cl / (2 * np.pi)
    assert band[0] == pytest.approx(3.04e-5, rel=0.15) and band[1] == pytest.approx(7.34e-5, rel=0.15)


def test_predicted_variance_ratio_and_its_errors():
    np.testing.assert_allclose(ssc_theory.predicted_variance_ratio([1.0, 2.0], [4.0, 4.0]), [1.25, 1.5])
    with pytest.raises(ValueError, match="measured_variance: shape"):
        ssc_theory.predicted_variance_ratio([1.0, 2.0], [4.0])
    with pytest.raises(ValueError, match="positive"):
        ssc_theory.predicted_variance_ratio([1.0], [0.0])
    with pytest.raises(ValueError, match="box_mpc_h"):
        ssc_theory.predict_power_spectrum_ssc(H0, OM0, ZS, [500.0], 10.0, -1.0)


def test_without_pyccl_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyccl", None)  # import pyccl now raises ImportError
    with pytest.raises(ImportError, match=r"lensing_ssc\[theory\]"):
        ssc_theory.cosmology(H0, OM0)
