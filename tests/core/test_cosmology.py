"""Tests of lensing_ssc.core.cosmology against SCIENCE.md §2.1 numbers and independent integrals."""
import numpy as np
import pytest
from astropy import units as u
from astropy.cosmology import z_at_value
from scipy.integrate import quad
from scipy.optimize import brentq

from lensing_ssc.core.cosmology import (
    check_against_header,
    comoving_distance_mpc,
    comoving_distance_mpch,
    hubble_over_c_per_mpc,
    make_cosmology,
    redshift_at_comoving_distance_mpc,
)

C_KM_S = 299792.458


@pytest.fixture(scope="module")
def cosmo():
    return make_cosmology()


def test_defaults_are_the_original_cosmology(cosmo):
    assert cosmo.H0.value == 67.74
    assert cosmo.Om0 == 0.309
    assert cosmo.Tcmb0.value == 0.0
    assert cosmo.Ok0 == 0.0
    assert hubble_over_c_per_mpc(cosmo) == pytest.approx(2.25956e-4, rel=2e-6)


def test_source_distances_match_science_table(cosmo):
    # SCIENCE.md §2.1: chi(zs) in Mpc, printed to 0.1 Mpc.
    zs = [0.5, 1.0, 1.5, 2.0, 2.5]
    expected = [1945.6, 3396.0, 4479.3, 5311.9, 5972.3]
    np.testing.assert_allclose(comoving_distance_mpc(cosmo, zs), expected, atol=0.05)


def test_distance_matches_direct_integral(cosmo):
    # chi(z) = (c/H0) int_0^z dz' / sqrt(Om (1+z')^3 + 1 - Om), computed independently with scipy.
    om = 0.309
    for z in (0.01, 0.7, 2.3, 9.0):
        integral, _ = quad(lambda x: 1.0 / np.sqrt(om * (1 + x) ** 3 + 1 - om), 0.0, z, epsabs=0, epsrel=1e-12)
        assert comoving_distance_mpc(cosmo, z) == pytest.approx(C_KM_S / 67.74 * integral, rel=1e-9)


def test_mpch_is_mpc_times_h(cosmo):
    z = np.array([0.0, 0.3, 1.2, 3.0])
    np.testing.assert_allclose(comoving_distance_mpch(cosmo, z), comoving_distance_mpc(cosmo, z) * 0.6774, rtol=1e-14)
    assert comoving_distance_mpc(cosmo, np.zeros((2, 3))).shape == (2, 3)


def test_redshift_inversion_matches_root_finding(cosmo):
    chi = np.array([0.0, 0.5, 33.4, 1010.5, 3347.1, 5983.6, 9000.0])
    z = redshift_at_comoving_distance_mpc(cosmo, chi)
    assert z[0] == pytest.approx(0.0, abs=1e-12)
    for c, zi in zip(chi[1:], z[1:]):
        reference = brentq(lambda x: float(comoving_distance_mpc(cosmo, x)) - c, 0.0, 50.0, xtol=1e-15, rtol=1e-15)
        assert zi == pytest.approx(reference, rel=1e-11)
        # astropy's z_at_value (what the original used) minimises |chi(z) - c|: ~1e-7 relative at best
        assert zi == pytest.approx(z_at_value(cosmo.comoving_distance, c * u.Mpc, ztol=1e-12).value, rel=1e-7)
    # round trip on a 2-D array keeps the shape
    zz = np.linspace(0.0, 5.0, 12).reshape(3, 4)
    np.testing.assert_allclose(redshift_at_comoving_distance_mpc(cosmo, comoving_distance_mpc(cosmo, zz)), zz, atol=1e-9)


@pytest.mark.parametrize("bad", [-1.0, np.nan, 1e6])
def test_redshift_inversion_rejects_impossible_distances(cosmo, bad):
    with pytest.raises(ValueError, match="chi_mpc"):
        redshift_at_comoving_distance_mpc(cosmo, bad)


def test_bad_inputs_raise(cosmo):
    with pytest.raises(ValueError, match="Om0"):
        make_cosmology(Om0=1.5)
    with pytest.raises(ValueError, match="H0"):
        make_cosmology(H0=0.0)
    with pytest.raises(ValueError, match="z must"):
        comoving_distance_mpc(cosmo, [-0.1, 1.0])
    with pytest.raises(ValueError, match="rtol"):
        check_against_header(cosmo, 0.309, 0.6774, rtol=-1)
    with pytest.raises(ValueError, match="HubbleParam"):
        check_against_header(cosmo, 0.309, 0.0)


def test_header_check_default_accepts_original_rounding(cosmo):
    # The FastPM runs used OmegaM = 0.3089, h = 0.6774; the original analysis 0.309 (3.2e-4 relative).
    assert check_against_header(cosmo, omega_m=0.3089, hubble_param=0.6774) == []


def test_header_check_fires_only_when_tolerance_is_tighter_than_difference(cosmo):
    relative = (0.309 - 0.3089) / 0.3089  # 3.237e-4
    assert check_against_header(cosmo, 0.3089, 0.6774, rtol=relative * 1.01) == []
    warnings = check_against_header(cosmo, 0.3089, 0.6774, rtol=relative * 0.99)
    assert len(warnings) == 1
    assert "OmegaM" in warnings[0] and "0.3089" in warnings[0] and "0.309" in warnings[0]


def test_header_check_reports_each_mismatching_parameter(cosmo):
    warnings = check_against_header(cosmo, omega_m=0.25, hubble_param=0.7)
    assert len(warnings) == 2
    assert any("OmegaM" in w for w in warnings) and any("HubbleParam" in w for w in warnings)
