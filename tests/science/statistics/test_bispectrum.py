"""Tests of the lenstools-convention flat-sky bispectra (SCIENCE.md §6.3, §11.4, Appendix A.7)."""
import math

import numpy as np
import pytest

from lensing_ssc.science.statistics.binning import ell_centers, ell_edges
from lensing_ssc.science.statistics.bispectrum import (NAMED_CONFIGURATIONS, bispectrum,
                                                        bispectrum_from_fft,
                                                        dimensionless_bispectrum)
from lensing_ssc.science.statistics.power_spectrum import patch_rfft2, power_spectrum

CONFIGURATIONS = [("equilateral", None), ("folded", 0.5), ("folded", 0.1)]


def literal_bispectrum(fft_rfft2, patch_size_deg, l_edges, configuration, ratio):
    """Brute-force transcription of the lenstools C bispectrum loop (SCIENCE.md §6.3).

    Returns (B_k, scale_k) where scale_k = normalization * sum|terms| / hits bounds rounding errors.
    """
    n_x, size_y = fft_rfft2.shape
    lpix = 360.0 / patch_size_deg
    nbin = len(l_edges) - 1
    sin120, cos120, tan120 = 0.8660254037844386, -0.5, -1.7320508075688772

    def second_leg(kx1, ky1):
        if configuration == "equilateral":
            if kx1 < 0 and ky1 < kx1 * tan120:
                return None
            return int(cos120 * kx1 - sin120 * ky1), int(sin120 * kx1 + cos120 * ky1)
        return -int(ratio * kx1), -int(ratio * ky1)  # int() truncates toward zero like C

    def fetch(kx, ky):
        conjugate = ky < 0
        if conjugate:
            kx, ky = -kx, -ky
        if ky >= size_y or kx <= -size_y or kx >= size_y:
            return None
        if kx < 0:
            kx += n_x
        value = complex(fft_rfft2[kx, ky])
        return value.conjugate() if conjugate else value

    sums, scales, hits = [0.0] * nbin, [0.0] * nbin, [0] * nbin
    for i in range(n_x):
        kx1 = i if i < n_x // 2 else i - n_x
        for j in range(size_y):
            ky1 = j
            ell = math.sqrt(kx1 * kx1 + ky1 * ky1) * lpix
            if ell >= l_edges[-1]:
                continue
            leg2 = second_leg(kx1, ky1)
            if leg2 is None:
                continue
            kx2, ky2 = leg2
            b2 = fetch(kx2, ky2)
            b3 = fetch(-kx1 - kx2, -ky1 - ky2)
            if b2 is None or b3 is None:
                continue
            triple = (complex(fft_rfft2[i, j]) * b2 * b3).real
            for k in range(nbin):
                if l_edges[k] < ell <= l_edges[k + 1]:
                    hits[k] += 1
                    sums[k] += triple
                    scales[k] += abs(triple)
    normalization = (patch_size_deg * math.pi / 180.0) ** 4 / n_x**6
    result = np.array([normalization * s / h if h else 0.0 for s, h in zip(sums, hits)])
    scale = np.array([normalization * s / h if h else 0.0 for s, h in zip(scales, hits)])
    return result, scale


@pytest.mark.parametrize("n, patch_size_deg", [(32, 10.0), (48, 10.0), (48, 3.7)])
def test_matches_literal_loop(n, patch_size_deg):
    rng = np.random.default_rng(100 + n)
    lpix = 360.0 / patch_size_deg
    # edges on exact mode multipoles (|k| = 3, 5, 10, 13 fundamentals) exercise the half-open bins
    # and the l1 >= l_edges[-1] skip; the log edges reach the Nyquist corner where legs go out of range
    edge_sets = [lpix * np.array([1.5, 3.0, 5.0, 7.0, 10.0, 13.0]),
                 ell_edges(lpix * 0.9, lpix * n * 0.7, 8)]
    for _ in range(3):
        gauss = rng.standard_normal((n, n))
        patch = 0.02 * gauss + 0.3 * 0.02 * (gauss**2 - 1) + 0.005  # skewed, non-zero mean
        fft_numpy = np.fft.rfft2(patch)
        for edges in edge_sets:
            for configuration, ratio in CONFIGURATIONS:
                reference, scale = literal_bispectrum(fft_numpy, patch_size_deg, edges,
                                                      configuration, ratio)
                assert np.count_nonzero(reference) >= 4
                # 1e-12 relative, to the value or (bins with cancellations) to the sum of |terms|
                tolerance = 1e-12 * np.maximum(np.abs(reference), scale)
                from_fft = bispectrum_from_fft(fft_numpy, n, patch_size_deg, edges, configuration, ratio)
                from_patch = bispectrum(patch, patch_size_deg, edges, configuration, ratio)
                assert np.all(np.abs(from_fft - reference) <= tolerance), (configuration, ratio)
                assert np.all(np.abs(from_patch - reference) <= tolerance), (configuration, ratio)


def test_named_configurations_are_the_production_ones():
    assert NAMED_CONFIGURATIONS == {"equilateral": ("equilateral", None),
                                    "isosceles": ("folded", 0.5), "squeezed": ("folded", 0.1)}


def quadratic_bispectra(n, patch_size_deg, sigma, fnl, edges, realisations, rng):
    """Bispectra of kappa = g + fnl (g^2 - sigma^2), g white with pixel std sigma.

    Each realisation averages g and -g (this cancels the terms odd in g, i.e. the Gaussian part and
    its O(fnl^2) partner, exactly). Returns an array (realisations, configuration, bin).
    """
    out = np.empty((realisations, len(CONFIGURATIONS), len(edges) - 1))
    for r in range(realisations):
        gauss = rng.normal(0.0, sigma, (n, n))
        pair = []
        for g in (gauss, -gauss):
            fft = patch_rfft2(g + fnl * (g**2 - sigma**2))
            pair.append([bispectrum_from_fft(fft, n, patch_size_deg, edges, c, ratio)
                         for c, ratio in CONFIGURATIONS])
        out[r] = 0.5 * (np.array(pair[0]) + np.array(pair[1]))
    return out


def test_local_quadratic_field_has_the_exact_expected_bispectrum():
    """For white g: E Re(F1 F2 F3) = N^2 (6 fnl s^4 + 8 fnl^3 s^6) for closed triangles without a
    zero leg, hence B = (theta/N)^4 (6 fnl s^4 + 8 fnl^3 s^6) = 6 fnl P^2 + O(fnl^3) in every bin and
    configuration; B must also scale linearly with fnl."""
    n, patch_size_deg, sigma = 64, 5.0, 0.02
    lpix = 360.0 / patch_size_deg
    edges = lpix * np.array([10.5, 18.0, 26.0])  # |k1| >= 10.5: no zero leg even for r = 0.1
    theta = np.deg2rad(patch_size_deg)
    # the same g realisations for both fnl
    results = {fnl: quadratic_bispectra(n, patch_size_deg, sigma, fnl, edges, 300,
                                        np.random.default_rng(2024))
               for fnl in (2.0, 4.0)}
    for fnl, values in results.items():
        expected = (theta / n) ** 4 * (6 * fnl * sigma**4 + 8 * fnl**3 * sigma**6)
        mean = values.mean(axis=0)
        sem = values.std(axis=0, ddof=1) / np.sqrt(values.shape[0])
        assert np.all(sem < 0.12 * expected)            # the test resolves the amplitude
        assert np.all(np.abs(mean - expected) < 4 * sem)
        assert np.all(mean > 0)
    ratio = results[4.0].mean(axis=0) / results[2.0].mean(axis=0)
    expected_ratio = (6 * 4.0 + 8 * 4.0**3 * sigma**2) / (6 * 2.0 + 8 * 2.0**3 * sigma**2)
    np.testing.assert_allclose(ratio, expected_ratio, rtol=0.02)


def test_gaussian_field_bispectrum_consistent_with_zero():
    n, patch_size_deg = 64, 10.0
    edges = ell_edges(100.0, 1100.0, 6)
    rng = np.random.default_rng(99)
    theta = np.deg2rad(patch_size_deg)
    ell = 2 * np.pi * np.hypot(np.fft.fftfreq(n, theta / n)[:, None],
                               np.fft.rfftfreq(n, theta / n)[None, :])
    filt = np.zeros_like(ell)
    filt[ell > 0] = (ell[ell > 0] / 300.0) ** -0.75  # red spectrum, P ~ ell^-1.5
    values = []
    for _ in range(40):
        g = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, n))) * filt, s=(n, n))
        fft = patch_rfft2(g)
        values.append([bispectrum_from_fft(fft, n, patch_size_deg, edges, c, r)
                       for c, r in CONFIGURATIONS])
    values = np.array(values)
    mean = values.mean(axis=0)
    sem = values.std(axis=0, ddof=1) / np.sqrt(values.shape[0])
    assert np.all(sem > 0)
    assert np.all(np.abs(mean) < 4 * sem)


def test_squeezed_first_bins_read_the_patch_mean():
    """§11.4: for |k1| < 10 fundamentals, int(0.1 k1) = 0, so k2 is the DC mode and
    B_k = mean(kappa) * theta_rad^2 * P_k exactly."""
    n, patch_size_deg = 48, 10.0
    lpix = 360.0 / patch_size_deg
    edges = lpix * np.array([1.2, 3.3, 6.1, 9.9])
    rng = np.random.default_rng(8)
    patch = rng.standard_normal((n, n)) * 0.01 + 0.003
    expected = patch.mean() * np.deg2rad(patch_size_deg) ** 2 * power_spectrum(patch, patch_size_deg, edges)
    np.testing.assert_allclose(bispectrum(patch, patch_size_deg, edges, "folded", 0.1), expected,
                               rtol=1e-10)


def test_dimensionless_bispectrum_takes_the_absolute_value():
    ell = np.array([100.0, 1000.0])
    bispec = np.array([-2.0e-15, 3.0e-16])
    np.testing.assert_allclose(dimensionless_bispectrum(bispec, ell),
                               np.abs(bispec) * ell**4 / (4 * np.pi**2), rtol=1e-15)
    ell = ell_centers(ell_edges())
    rows = -np.ones((3, 8)) * 1e-16
    np.testing.assert_allclose(dimensionless_bispectrum(rows, ell),
                               1e-16 * np.broadcast_to(ell**4, (3, 8)) / (2 * np.pi) ** 2, rtol=1e-15)
    with pytest.raises(ValueError, match="bispec, ell"):
        dimensionless_bispectrum(np.ones(3), np.ones(4))


def test_bad_input_raises_value_error():
    edges = ell_edges()
    patch = np.zeros((16, 16))
    with pytest.raises(ValueError, match="configuration"):
        bispectrum(patch, 10.0, edges, "squeezed")
    with pytest.raises(ValueError, match="ratio"):
        bispectrum(patch, 10.0, edges, "folded")
    with pytest.raises(ValueError, match="ratio"):
        bispectrum(patch, 10.0, edges, "folded", 1.0)
    with pytest.raises(ValueError, match="ratio"):
        bispectrum(patch, 10.0, edges, "equilateral", 0.5)
    with pytest.raises(ValueError, match="N"):
        bispectrum(np.zeros((15, 15)), 10.0, edges, "equilateral")
    with pytest.raises(ValueError, match="fft_rfft2"):
        bispectrum_from_fft(np.zeros((16, 16), dtype=complex), 16, 10.0, edges, "equilateral")
    with pytest.raises(ValueError, match="patch_size_deg"):
        bispectrum(patch, 0.0, edges, "equilateral")
    with pytest.raises(ValueError, match="l_edges"):
        bispectrum(patch, 10.0, [2.0, 1.0], "equilateral")
