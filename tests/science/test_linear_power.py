"""Tests of lensing_ssc.science.linear_power against independent integrals, fits and FastPM's P(k)."""
import os

import numpy as np
import pytest
from scipy.integrate import quad

from lensing_ssc.science.linear_power import (eisenstein_hu_no_wiggle_transfer, linear_growth_factor,
                                              linear_growth_rate, linear_power_spectrum)

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data")
OMEGA_M = 0.309


def _sigma_r_quad(power_of_k, radius):
    """sigma(R) by adaptive quadrature in ln k (independent of the module's Simpson grid)."""
    def integrand(lnk):
        k = np.exp(lnk)
        x = k * radius
        window = 3.0 * (np.sin(x) - x * np.cos(x)) / x ** 3
        return k ** 3 * power_of_k(k) * window ** 2 / (2.0 * np.pi ** 2)
    value, _ = quad(integrand, np.log(1e-5), np.log(50.0), limit=1000)
    return np.sqrt(value)


@pytest.mark.parametrize("sigma8", [0.8159, 0.6])
def test_sigma8_recovered_by_independent_integration(sigma8):
    measured = _sigma_r_quad(lambda k: linear_power_spectrum(k, 0.0, sigma8=sigma8), 8.0)
    assert measured == pytest.approx(sigma8, rel=2e-3)


def test_power_scales_with_growth_squared():
    k = np.array([0.01, 0.1, 1.0])
    ratio = linear_power_spectrum(k, 1.0) / linear_power_spectrum(k, 0.0)
    np.testing.assert_allclose(ratio, linear_growth_factor(0.5, OMEGA_M) ** 2, rtol=1e-12)


def test_growth_matches_heath_integral():
    def hubble_e(a):
        return np.sqrt(OMEGA_M / a ** 3 + 1.0 - OMEGA_M)

    def heath(a):
        return hubble_e(a) * quad(lambda x: 1.0 / (x * hubble_e(x)) ** 3, 0.0, a)[0]

    a = np.array([0.05, 0.2, 0.4, 0.7, 1.0])
    expected = np.array([heath(x) for x in a]) / heath(1.0)
    np.testing.assert_allclose(linear_growth_factor(a, OMEGA_M), expected, rtol=1e-6)


def test_growth_matches_carroll_press_turner_fit():
    # Carroll, Press & Turner (1992) / Lahav et al. (1991) fit, accurate to ~1% for flat LCDM
    z = np.linspace(0.0, 3.0, 13)
    a = 1.0 / (1.0 + z)
    omega_m_z = OMEGA_M / a ** 3 / (OMEGA_M / a ** 3 + 1.0 - OMEGA_M)
    omega_l_z = 1.0 - omega_m_z
    g = 2.5 * omega_m_z / (omega_m_z ** (4.0 / 7.0) - omega_l_z + (1.0 + omega_m_z / 2.0) * (1.0 + omega_l_z / 70.0))
    cpt = g * a / g[0]
    np.testing.assert_allclose(linear_growth_factor(a, OMEGA_M), cpt, rtol=1e-2)
    assert linear_growth_factor(1.0, OMEGA_M) == pytest.approx(1.0)


def test_growth_rate_matches_derivative_and_linder_fit():
    a = np.array([0.1, 0.3, 0.6, 1.0])
    eps = 1e-5
    numeric = (np.log(linear_growth_factor(a * (1 + eps), OMEGA_M))
               - np.log(linear_growth_factor(a * (1 - eps), OMEGA_M))) / (np.log1p(eps) - np.log1p(-eps))
    np.testing.assert_allclose(linear_growth_rate(a, OMEGA_M), numeric, rtol=1e-7)
    omega_m_a = OMEGA_M / a ** 3 / (OMEGA_M / a ** 3 + 1.0 - OMEGA_M)
    np.testing.assert_allclose(linear_growth_rate(a, OMEGA_M), omega_m_a ** 0.55, rtol=6e-3)


def test_transfer_function_limits():
    assert eisenstein_hu_no_wiggle_transfer(1e-6) == pytest.approx(1.0, abs=1e-4)
    t = eisenstein_hu_no_wiggle_transfer(np.logspace(-4, 2, 50))
    assert np.all(np.diff(t) < 0)


def test_shape_matches_fastpm_powerspec_at_same_sigma8():
    """FastPM tests/powerspec.txt (CAMB-like, with BAO wiggles): no-wiggle EH98 within 10% over 0.01-0.3 h/Mpc."""
    k_file, p_file = np.loadtxt(os.path.join(DATA, "fastpm_powerspec.txt"), unpack=True)
    x = k_file * 8.0
    window = 3.0 * (np.sin(x) - x * np.cos(x)) / x ** 3
    sigma8_file = np.sqrt(np.trapezoid(k_file ** 3 * p_file * window ** 2, np.log(k_file)) / (2 * np.pi ** 2))
    assert sigma8_file == pytest.approx(0.8159, abs=2e-3)  # the README's value: the integral is right
    k = np.logspace(np.log10(0.01), np.log10(0.3), 40)
    ratio = linear_power_spectrum(k, 0.0, sigma8=sigma8_file) / np.interp(k, k_file, p_file)
    assert np.all(np.abs(ratio - 1.0) < 0.10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="omega_m"):
        linear_power_spectrum(0.1, 0.0, omega_m=0.0)
    with pytest.raises(ValueError, match="z must be"):
        linear_power_spectrum(0.1, -1.0)
    with pytest.raises(ValueError, match="sigma8"):
        linear_power_spectrum(0.1, 0.0, sigma8=-1.0)
    with pytest.raises(ValueError, match="scale factor"):
        linear_growth_factor(0.0)
    assert linear_power_spectrum(np.array([0.0, -1.0]), 0.0).tolist() == [0.0, 0.0]
