"""Tests of lensing_ssc.science.limber: continuous-Limber limit, exact white-noise cases, Monte Carlo."""
import os

import healpy as hp
import numpy as np
import pytest
from astropy.io import fits
from scipy.integrate import quad

from lensing_ssc.core.cosmology import comoving_distance_mpc, make_cosmology
from lensing_ssc.science.born import born_weights
from lensing_ssc.science.limber import (
    DEBIAN_HEALPY_DATA,
    limber_cl_kappa,
    limber_cl_shells,
    pixel_window,
    shot_noise_cl,
)
from lensing_ssc.science.shells import pixel_volume, shell_geometry

H = 0.6774
SHEETS = np.arange(28, 100)
A_FAR, A_NEAR = 0.01 * SHEETS, 0.01 * (SHEETS + 1)


def toy_power(k_hmpc, z):
    """Power law in k [h/Mpc] with a (1+z)^-2 growth, in (Mpc/h)^3; checks the calling convention."""
    assert isinstance(z, float) and k_hmpc.ndim == 1
    return 2.0e3 * (k_hmpc / 0.1) ** -1.5 / (1.0 + z) ** 2


def broken_power(k_hmpc, z):
    """P ~ k below and k^-2 above k0 = 0.02 h/Mpc: C_ell is no longer a pure power of ell."""
    x = k_hmpc / 0.02
    return 3.0e4 * x / (1.0 + x**3) / (1.0 + z) ** 2


@pytest.fixture(scope="module")
def cosmo():
    return make_cosmology()


def continuous_limber(cosmo, ell, zs, power):
    """C_ell = int dchi W^2/chi^2 P, written independently as an integral over z, all in Mpc."""
    om, h0_over_c = 0.309, 67.74 / 299792.458
    chi_s = float(comoving_distance_mpc(cosmo, zs))

    def integrand(z):
        chi = float(comoving_distance_mpc(cosmo, z))  # Mpc
        dchi_dz = 1.0 / (h0_over_c * np.sqrt(om * (1 + z) ** 3 + 1 - om))
        w_over_chi = 1.5 * om * h0_over_c**2 * (1 + z) * (1 - chi / chi_s)  # W(chi)/chi [1/Mpc^2]
        k_hmpc = (ell + 0.5) / chi / H
        p_mpc3 = power(np.array([k_hmpc]), float(z))[0] / H**3
        return dchi_dz * w_over_chi**2 * p_mpc3

    return quad(integrand, 1e-8, zs, epsrel=1e-8, limit=200)[0]


@pytest.mark.parametrize("power", [toy_power, broken_power])
def test_thin_shells_converge_to_continuous_limber(cosmo, power):
    ell = np.array([20.0, 200.0, 1000.0, 3000.0])
    reference = np.array([continuous_limber(cosmo, l, 1.0, power) for l in ell])
    cl_sheets = limber_cl_kappa(ell, cosmo, A_FAR, A_NEAR, 1.0, power)
    assert cl_sheets.shape == (4,)
    np.testing.assert_allclose(cl_sheets, reference, rtol=0.01)  # measured: 0.17% for both spectra
    a = np.linspace(0.28, 1.0, 361)  # shells of da = 0.002
    cl_thin = limber_cl_kappa(ell, cosmo, a[:-1], a[1:], 1.0, power)
    assert np.all(np.abs(cl_thin / reference - 1) < np.abs(cl_sheets / reference - 1))
    np.testing.assert_allclose(cl_thin, reference, rtol=1e-3)


def test_constant_power_gives_white_noise_of_shell_volume(cosmo):
    # P = P0 (3-D white noise): C^i = P0 / V'_i exactly, V'_i = (chi1^3 - chi2^3)/3 in (Mpc/h)^3.
    p0 = 123.0
    g = shell_geometry(cosmo, A_FAR[::10], A_NEAR[::10])
    cl = limber_cl_shells([10.0, 500.0], cosmo, A_FAR[::10], A_NEAR[::10], lambda k, z: np.full_like(k, p0))
    expected = p0 * 3.0 / (g["chi_far"] ** 3 - g["chi_near"] ** 3)
    np.testing.assert_allclose(cl, np.repeat(expected[:, None], 2, axis=1), rtol=1e-12)


def test_shot_noise_equals_limber_of_poisson_white_power(cosmo):
    # Poisson sampling at number density n adds P_shot = 1/n: both routes must agree.
    n_density, npix, zs = 0.05, 12 * 64**2, 1.5  # particles per (Mpc/h)^3
    g = shell_geometry(cosmo, A_FAR, A_NEAR)
    nbar_pix = n_density * pixel_volume(g["chi_far"], g["chi_near"], npix)
    weights = born_weights(cosmo, A_FAR, A_NEAR, zs)
    via_limber = limber_cl_kappa([100.0], cosmo, A_FAR, A_NEAR, zs, lambda k, z: np.full_like(k, 1 / n_density))
    assert shot_noise_cl(weights, nbar_pix, npix) == pytest.approx(via_limber[0], rel=1e-12)


def test_shot_noise_matches_poisson_monte_carlo():
    rng = np.random.default_rng(42)
    nside = 16
    npix = hp.nside2npix(nside)
    weights = np.array([0.3, 0.0, 0.5, 0.2])
    nbar = np.array([50.0, 0.0, 200.0, 80.0])  # the unweighted shell may be empty
    expected = shot_noise_cl(weights, nbar, npix)
    assert expected == pytest.approx(4 * np.pi / npix * (0.09 / 50 + 0.25 / 200 + 0.04 / 80))
    spectra = []
    for _ in range(4):
        kappa = sum(w * (rng.poisson(n, npix) / n - 1.0) for w, n in zip(weights, nbar) if w)
        spectra.append(hp.anafast(kappa, lmax=2 * nside)[2:])
    assert np.mean(spectra) == pytest.approx(expected, rel=0.05)


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(DEBIAN_HEALPY_DATA, "pixel_window_n0016.fits")),
    reason="offline pixel-window tables need the Debian package healpy-data",
)
def test_pixel_window_matches_pixel_averaging():
    # Averaging a smooth field over nside-16 pixels (ud_grade of an nside-128 map) multiplies C_ell by W_ell^2.
    nside_low, nside_high, lmax = 16, 128, 40
    window = pixel_window(nside_low, lmax)
    assert window.shape == (lmax + 1,) and window[0] == pytest.approx(1.0)
    ell = np.arange(3 * nside_high)
    input_cl = np.exp(-((ell / 30.0) ** 2))  # negligible power above ell ~ 2 nside_low: little aliasing
    np.random.seed(3)  # healpy.synfast draws from numpy's global generator
    high = hp.synfast(input_cl, nside_high, lmax=3 * nside_high - 1, pixwin=False)
    low = hp.ud_grade(high, nside_low)
    ratio = (hp.anafast(low, lmax=lmax) / hp.anafast(high, lmax=lmax))[2:33] / window[2:33] ** 2
    # pixels are not isotropic: single multipoles scatter by a few %, the band average is tight
    # (returning W_ell instead of W_ell^2 would give a mean of 0.936)
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)
    np.testing.assert_allclose(ratio, 1.0, atol=0.08)


def test_pixel_window_reads_table_from_datapath(tmp_path):
    column = fits.Column(name="TEMPERATURE", format="D", array=np.linspace(1.0, 0.5, 17))
    fits.BinTableHDU.from_columns([column]).writeto(tmp_path / "pixel_window_n0004.fits")
    np.testing.assert_array_equal(pixel_window(4, 8, datapath=str(tmp_path)), np.linspace(1.0, 0.5, 17)[:9])
    with pytest.raises(ValueError, match="lmax"):
        pixel_window(4, 17, datapath=str(tmp_path))
    with pytest.raises(ValueError, match="datapath"):
        pixel_window(8, 8, datapath=str(tmp_path))


def test_no_weight_gives_zero_power(cosmo):
    cl = limber_cl_kappa([100.0, 1000.0], cosmo, A_FAR[:10], A_NEAR[:10], 0.5, toy_power)
    np.testing.assert_array_equal(cl, 0.0)


def test_bad_inputs_raise(cosmo):
    with pytest.raises(ValueError, match="pk_of_k_z"):
        limber_cl_kappa([100.0], cosmo, A_FAR, A_NEAR, 1.0, lambda k, z: 1.0)
    with pytest.raises(ValueError, match="ell"):
        limber_cl_kappa([-1.0], cosmo, A_FAR, A_NEAR, 1.0, toy_power)
    with pytest.raises(ValueError, match="n_quad"):
        limber_cl_shells([10.0], cosmo, A_FAR, A_NEAR, toy_power, n_quad=0)
    with pytest.raises(ValueError, match="mean_particles_per_pixel"):
        shot_noise_cl([0.1, 0.2], [10.0, 0.0], 12)
    with pytest.raises(ValueError, match="nside"):
        pixel_window(15, 10)
