"""Tests of lensing_ssc.science.born against the SCIENCE.md §3.1 reference weights and brute force."""
import hashlib

import numpy as np
import pytest
from astropy import units as u
from astropy.cosmology import z_at_value
from scipy.integrate import quad

from lensing_ssc.core.cosmology import comoving_distance_mpc, make_cosmology
from lensing_ssc.science.born import (
    born_weight_table,
    born_weights,
    lensing_kernel_per_mpc,
    shell_distances_mpc,
    weights_hash,
)

SHEETS = np.arange(28, 100)
A_FAR, A_NEAR = 0.01 * SHEETS, 0.01 * (SHEETS + 1)
ZS_LIST = [0.5, 1.0, 1.5, 2.0, 2.5]

# SCIENCE.md §3.1: zs -> (first sheet with Wbar>0, count, sum Wbar, max Wbar, argmax sheet, Wbar_50, Wbar_80)
REFERENCE = {
    0.5: (67, 33, 0.01848, 0.00089, 77, 0.0, 0.000861),
    1.0: (50, 50, 0.06564, 0.00231, 63, 0.000223, 0.001258),
    1.5: (40, 60, 0.12832, 0.00403, 53, 0.003914, 0.001387),
    2.0: (33, 67, 0.19788, 0.00591, 46, 0.005728, 0.001450),
    2.5: (29, 71, 0.26983, 0.00786, 41, 0.006807, 0.001488),
}


@pytest.fixture(scope="module")
def cosmo():
    return make_cosmology()


@pytest.fixture(scope="module")
def table(cosmo):
    return born_weight_table(cosmo, A_FAR, A_NEAR, ZS_LIST)


@pytest.mark.parametrize("row, zs", list(enumerate(ZS_LIST)))
def test_weights_match_science_table(table, row, zs):
    first, count, total, wmax, argmax, w50, w80 = REFERENCE[zs]
    w = table[row]
    positive = SHEETS[w > 0]
    assert positive.size == count
    np.testing.assert_array_equal(positive, np.arange(first, 100))
    assert w.sum() == pytest.approx(total, abs=5e-6)
    assert w.max() == pytest.approx(wmax, abs=5e-6)
    assert SHEETS[np.argmax(w)] == argmax
    assert w[SHEETS == 50][0] == pytest.approx(w50, abs=5e-7)
    assert w[SHEETS == 80][0] == pytest.approx(w80, abs=5e-7)


def test_chi_mid_matches_geometry_table(cosmo):
    # SCIENCE.md §2.1 chi_mid column [Mpc] (volume-weighted mean distance).
    sheets = np.array([28, 50, 66, 80, 99])
    _, _, chi_mid = shell_distances_mpc(cosmo, 0.01 * sheets, 0.01 * (sheets + 1))
    np.testing.assert_allclose(chi_mid, [5983.6, 3347.1, 1958.9, 1010.5, 33.4], atol=0.05)


def test_weights_match_brute_force_with_z_at_value(cosmo):
    # Independent re-implementation of §3.1 with scipy quadrature for chi and astropy z_at_value for z.
    om, h0_over_c = 0.309, 67.74 / 299792.458

    def chi(z):
        return quad(lambda x: 1.0 / np.sqrt(om * (1 + x) ** 3 + 1 - om), 0, z, epsrel=1e-12)[0] / h0_over_c

    zs = 1.5
    chi_s = chi(zs)
    for i in (41, 57, 73, 99):
        chi1, chi2 = chi(1 / (0.01 * i) - 1), chi(1 / (0.01 * (i + 1)) - 1)
        mid = 0.75 * (chi1**4 - chi2**4) / (chi1**3 - chi2**3)
        z_mid = z_at_value(cosmo.comoving_distance, mid * u.Mpc, ztol=1e-12).value
        expected = 1.5 * om * h0_over_c**2 * (1 + z_mid) * mid * (1 - mid / chi_s) * (chi1 - chi2)
        assert born_weights(cosmo, 0.01 * i, 0.01 * (i + 1), zs) == pytest.approx(expected, rel=1e-8)


def test_zero_weight_beyond_source(cosmo):
    a = 0.01 * np.arange(5, 100)
    for zs in (0.3, 0.98, 1.7):
        w = born_weights(cosmo, a, a + 0.01, zs)
        _, _, chi_mid = shell_distances_mpc(cosmo, a, a + 0.01)
        behind = chi_mid >= comoving_distance_mpc(cosmo, zs)
        assert np.all(w[behind] == 0.0)
        assert np.all(w[~behind] > 0.0)


def test_sheet_straddling_source_is_not_split(cosmo):
    # zs = 0.99 lies inside sheet 50 (z 0.961..1.000), beyond its chi_mid: full-width weight, no split.
    chi1, chi2, chi_mid = shell_distances_mpc(cosmo, 0.50, 0.51)
    assert chi2 < chi_mid < comoving_distance_mpc(cosmo, 0.99) < chi1
    w = born_weights(cosmo, 0.50, 0.51, 0.99)
    assert w > 0
    assert w == pytest.approx(lensing_kernel_per_mpc(cosmo, chi_mid, 0.99) * (chi1 - chi2), rel=1e-14)


def test_sum_of_weights_approaches_continuous_integral(cosmo):
    # sum_i Wbar_i -> int_0^chi_s W(chi) dchi as the shells get thinner (zs = 1 sits on a sheet edge).
    chi_s = float(comoving_distance_mpc(cosmo, 1.0))
    continuous = quad(lambda c: float(lensing_kernel_per_mpc(cosmo, c, 1.0)), 0, chi_s, epsrel=1e-10)[0]
    errors = []
    for n in (50, 250):
        a = np.linspace(0.5, 1.0, n + 1)
        errors.append(abs(born_weights(cosmo, a[:-1], a[1:], 1.0).sum() / continuous - 1))
    assert errors[0] < 1e-3
    assert errors[1] < errors[0] / 10  # second-order convergence: 25x smaller for 5x thinner shells


def test_table_rows_are_born_weights(cosmo, table):
    assert table.shape == (5, 72) and table.dtype == np.float64
    np.testing.assert_array_equal(table[3], born_weights(cosmo, A_FAR, A_NEAR, 2.0))


def test_weights_hash(table):
    digest = weights_hash(table[1])
    assert digest == hashlib.sha256(np.asarray(table[1], dtype="<f8").tobytes()).hexdigest()
    assert weights_hash(list(table[1])) == digest
    changed = table[1].copy()
    changed[10] = np.nextafter(changed[10], 1.0)
    assert weights_hash(changed) != digest


def test_bad_inputs_raise(cosmo):
    with pytest.raises(ValueError, match="zs"):
        born_weights(cosmo, A_FAR, A_NEAR, 0.0)
    with pytest.raises(ValueError, match="a_far < a_near"):
        born_weights(cosmo, A_NEAR, A_FAR, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        born_weights(cosmo, A_FAR, A_NEAR[:-1], 1.0)
    with pytest.raises(ValueError, match="zs_list"):
        born_weight_table(cosmo, A_FAR, A_NEAR, [])
