"""Tests of the lenstools-convention flat-sky power spectrum (SCIENCE.md §5.1, §6.2, §11.2)."""
import math

import numpy as np
import pytest

from lensing_ssc.science.statistics.binning import ell_centers, ell_edges
from lensing_ssc.science.statistics.power_spectrum import (dimensionless_cl, patch_rfft2,
                                                            power_spectrum, power_spectrum_from_fft,
                                                            rfft2_bin_index, rfft2_multipoles)

ARCMIN2_TO_SR = (math.pi / 10800.0) ** 2


def literal_power_spectrum(fft_rfft2, patch_size_deg, l_edges):
    """Brute-force transcription of the lenstools C loop (azimuthal_rfft2), SCIENCE.md §6.2."""
    n_x, n_y = fft_rfft2.shape
    lpix = 360.0 / patch_size_deg
    nbin = len(l_edges) - 1
    sums, hits = [0.0] * nbin, [0] * nbin
    for i in range(n_x):
        lx = min(i, n_x - i) * lpix
        for j in range(n_y):
            ly = j * lpix
            ell = math.sqrt(lx * lx + ly * ly)
            for k in range(nbin):
                if l_edges[k] < ell <= l_edges[k + 1]:
                    value = complex(fft_rfft2[i, j])
                    sums[k] += value.real * value.real + value.imag * value.imag
                    hits[k] += 1
    normalization = ((patch_size_deg * math.pi / 180.0) / (n_x * n_x)) ** 2
    return np.array([normalization * s / h if h else 0.0 for s, h in zip(sums, hits)])


def gaussian_field(rng, n, patch_size_deg, power):
    """Periodic Gaussian random field with flat-sky spectrum power(ell) (numpy FFTs only).

    E|rfft2(field)|^2 = N^4 / theta_rad^2 * power(ell) for every non-zero mode.
    """
    theta = np.deg2rad(patch_size_deg)
    fx = np.fft.fftfreq(n, d=theta / n)   # cycles per radian
    fy = np.fft.rfftfreq(n, d=theta / n)
    ell = 2 * np.pi * np.hypot(fx[:, None], fy[None, :])
    amplitude = np.zeros_like(ell)
    amplitude[ell > 0] = np.sqrt(power(ell[ell > 0])) * n / theta
    white = np.fft.rfft2(rng.standard_normal((n, n)))
    return np.fft.irfft2(white * amplitude, s=(n, n)), ell


@pytest.mark.parametrize("n, patch_size_deg", [(32, 10.0), (48, 10.0), (48, 3.7), (33, 10.0)])
def test_matches_literal_loop(n, patch_size_deg):
    rng = np.random.default_rng(n)
    lpix = 360.0 / patch_size_deg
    # edges on exact mode multipoles (|k| = 3, 5, 10, 13 fundamentals) exercise the half-open rule
    edge_sets = [lpix * np.array([1.5, 3.0, 5.0, 7.0, 10.0, 13.0, 20.0]),
                 ell_edges(lpix * 1.2, lpix * n / 2, 8)]
    for _ in range(3):
        patch = rng.standard_normal((n, n)) * 0.02 + 0.01
        fft_numpy = np.fft.rfft2(patch)
        for edges in edge_sets:
            reference = literal_power_spectrum(fft_numpy, patch_size_deg, edges)
            assert np.count_nonzero(reference) >= 5
            np.testing.assert_allclose(power_spectrum_from_fft(fft_numpy, n, patch_size_deg, edges),
                                       reference, rtol=1e-12, atol=0)
            np.testing.assert_allclose(power_spectrum(patch, patch_size_deg, edges), reference,
                                       rtol=1e-12, atol=0)


def test_single_fourier_mode_lands_in_its_bin_with_the_right_amplitude():
    n, patch_size_deg, amplitude = 64, 10.0, 0.05
    theta = np.deg2rad(patch_size_deg)
    lpix = 360.0 / patch_size_deg
    edges = lpix * np.array([0.5, 4.5, 5.5, 9.5, 10.5, 20.0])
    rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    # mode (3, 4): |k| = 5; a cosine has F = A N^2 / 2 at one stored rfft mode (ky = 4 > 0)
    patch = amplitude * np.cos(2 * np.pi * (3 * rows + 4 * cols) / n)
    index = rfft2_bin_index(n, patch_size_deg, edges)
    hits = np.bincount(index[index >= 0], minlength=edges.size - 1)
    expected = np.zeros(edges.size - 1)
    expected[1] = (theta / n**2) ** 2 * (amplitude * n**2 / 2) ** 2 / hits[1]
    np.testing.assert_allclose(power_spectrum(patch, patch_size_deg, edges), expected,
                               rtol=1e-10, atol=1e-14 * expected[1])
    # mode (10, 0) sits in the ky = 0 column where +kx and -kx are both stored: two hits
    patch = amplitude * np.cos(2 * np.pi * 10 * rows / n)
    expected = np.zeros(edges.size - 1)
    expected[3] = 2 * (theta / n**2) ** 2 * (amplitude * n**2 / 2) ** 2 / hits[3]
    np.testing.assert_allclose(power_spectrum(patch, patch_size_deg, edges), expected,
                               rtol=1e-10, atol=1e-14 * expected[3])


def test_parseval_over_all_modes():
    """With one bin holding every non-DC mode, P = theta^2/N^4 * mean|F|^2 ties to sum(kappa^2)."""
    n, patch_size_deg = 40, 7.0
    rng = np.random.default_rng(5)
    patch = rng.standard_normal((n, n))
    patch -= patch.mean()
    ell = rfft2_multipoles(n, patch_size_deg)
    edges = [0.0, ell.max()]
    power = power_spectrum(patch, patch_size_deg, edges)
    # full-plane Parseval: sum|F|^2 over the fft2 = N^2 sum kappa^2; the rfft half plane holds
    # columns 1..N/2-1 once for two fft2 modes, columns 0 and N/2 once each
    fft = np.fft.rfft2(patch)
    weights = np.full(fft.shape, 2.0)
    weights[:, 0] = weights[:, -1] = 1.0
    assert np.isclose(np.sum(weights * np.abs(fft) ** 2), n**2 * np.sum(patch**2), rtol=1e-12)
    n_modes = fft.size - 1  # all but DC
    expected = (np.deg2rad(patch_size_deg) / n**2) ** 2 * (np.sum(np.abs(fft) ** 2)) / n_modes
    np.testing.assert_allclose(power, [expected], rtol=1e-12)


def test_white_noise_power_is_sigma_pix_squared_times_pixel_area():
    """§5.1 / §11.2 noise check: <P_ell> = sigma_pix^2 * A_pix[sr], e.g. 8.17e-10 for ngal = 7."""
    a_pix_arcmin2 = (10 * 60 / 2048) ** 2
    assert a_pix_arcmin2 == 0.0858306884765625
    sigma_pix = 0.26 / math.sqrt(7 * a_pix_arcmin2)
    noise_power = sigma_pix**2 * a_pix_arcmin2 * ARCMIN2_TO_SR
    assert sigma_pix == pytest.approx(0.3354, abs=1e-4)
    assert noise_power == pytest.approx(8.17e-10, rel=2e-3)
    # production pixel size (10 deg / 2048) on a smaller 256^2 patch: theta = 1.25 deg
    n, patch_size_deg = 256, 10.0 * 256 / 2048
    edges = ell_edges(3000, 30000, 8)
    rng = np.random.default_rng(7)
    measured = np.array([power_spectrum(rng.normal(0, sigma_pix, (n, n)), patch_size_deg, edges)
                         for _ in range(8)])
    mean = measured.mean(axis=0)
    sem = measured.std(axis=0, ddof=1) / np.sqrt(len(measured))
    assert np.all(sem < 0.05 * noise_power)
    assert np.all(np.abs(mean - noise_power) < 4 * sem)
    assert np.mean(mean) == pytest.approx(noise_power, rel=0.02)


def test_noise_reference_numbers_of_science_md_11_2():
    """ell(ell+1) N_ell / 2pi for ngal = 7 at the first and last bin centres: 1.60e-5, 8.96e-4."""
    ell = ell_centers(ell_edges())
    cl = dimensionless_cl(np.full(8, 8.17e-10), ell)
    assert cl[0] == pytest.approx(1.60e-5, rel=5e-3)
    assert cl[-1] == pytest.approx(8.96e-4, rel=5e-3)


def test_gaussian_random_field_recovers_its_power_law():
    n, patch_size_deg = 192, 10.0  # |k| up to 96 > 3000 / 36: every bin is a complete annulus
    edges = ell_edges()

    def power(ell):
        return 1e-9 * (ell / 1000.0) ** -1.5
    rng = np.random.default_rng(11)
    measured, ell_modes = [], None
    for _ in range(20):
        field, ell_modes = gaussian_field(rng, n, patch_size_deg, power)
        measured.append(power_spectrum(field, patch_size_deg, edges))
    measured = np.array(measured)
    # expectation: the mean of power(ell) over the rfft modes of each bin (independent binning)
    expected = np.array([power(ell_modes[(ell_modes > lo) & (ell_modes <= hi)]).mean()
                         for lo, hi in zip(edges[:-1], edges[1:])])
    mean = measured.mean(axis=0)
    sem = measured.std(axis=0, ddof=1) / np.sqrt(len(measured))
    assert np.all(sem < 0.06 * expected)
    assert np.all(np.abs(mean - expected) < 4 * sem)
    # and close to the power law at the bin centres (log bins are narrow)
    np.testing.assert_allclose(expected, power(ell_centers(edges)), rtol=0.05)


def test_float32_input_is_measured_in_float64():
    rng = np.random.default_rng(3)
    patch = rng.standard_normal((32, 32)).astype(np.float32)
    edges = ell_edges(40, 500, 5)
    np.testing.assert_array_equal(power_spectrum(patch, 10.0, edges),
                                  power_spectrum(patch.astype(np.float64), 10.0, edges))


def test_rfft2_multipoles_against_fftfreq():
    n, patch_size_deg = 20, 4.0
    theta = np.deg2rad(patch_size_deg)
    ell = 2 * np.pi * np.hypot(np.fft.fftfreq(n, theta / n)[:, None], np.fft.rfftfreq(n, theta / n)[None, :])
    np.testing.assert_allclose(rfft2_multipoles(n, patch_size_deg), ell, rtol=1e-13)


def test_empty_bins_are_zero():
    power = power_spectrum(np.ones((16, 16)) + np.eye(16), 10.0, [1e5, 2e5])
    np.testing.assert_array_equal(power, [0.0])


def test_bad_input_raises_value_error():
    edges = ell_edges()
    with pytest.raises(ValueError, match="patch"):
        power_spectrum(np.zeros((8, 9)), 10.0, edges)
    with pytest.raises(ValueError, match="patch"):
        power_spectrum(np.full((8, 8), np.nan), 10.0, edges)
    with pytest.raises(ValueError, match="patch_size_deg"):
        power_spectrum(np.zeros((8, 8)), -1.0, edges)
    with pytest.raises(ValueError, match="l_edges"):
        power_spectrum(np.zeros((8, 8)), 10.0, [3.0, 2.0])
    with pytest.raises(ValueError, match="fft_rfft2"):
        power_spectrum_from_fft(np.zeros((8, 8), dtype=complex), 8, 10.0, edges)
    with pytest.raises(ValueError, match="fft_rfft2"):
        power_spectrum_from_fft(np.zeros((8, 5)), 8, 10.0, edges)
    with pytest.raises(ValueError, match="N"):
        power_spectrum_from_fft(patch_rfft2(np.zeros((8, 8))), 8.0, 10.0, edges)
    with pytest.raises(ValueError, match="power, ell"):
        dimensionless_cl(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="patch_size_deg"):
        power_spectrum(np.zeros((8, 8)), "10", edges)


def test_dimensionless_cl_per_patch_rows():
    ell = ell_centers(ell_edges())
    power = np.arange(16.0).reshape(2, 8) * 1e-10
    np.testing.assert_allclose(dimensionless_cl(power, ell), power * ell * (ell + 1) / (2 * np.pi),
                               rtol=1e-15)
