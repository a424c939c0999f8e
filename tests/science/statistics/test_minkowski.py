"""Minkowski functionals: the original's np.gradient estimator (SCIENCE.md §6.4) and Gaussian theory."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.special import erf, erfc

from lensing_ssc.science.patch_analysis import PatchAnalysisSettings, analyse_patch
from lensing_ssc.science.statistics import minkowski as minkowski_module
from lensing_ssc.science.statistics.minkowski import (doubled_gradient_columns, doubled_gradient_rows,
                                                      minkowski_functionals)

BINS = np.linspace(-4.0, 4.0, 9)


def literal_minkowski(nu, bins):
    """SCIENCE.md §6.4 written out literally (one boolean mask per bin)."""
    gy, gx = np.gradient(nu)
    hyy, _ = np.gradient(gy)
    hxy, hxx = np.gradient(gx)
    sigma1 = np.sqrt(np.mean(gx ** 2 + gy ** 2))
    norm2 = gx ** 2 + gy ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = np.where(norm2 == 0, np.nan, norm2)
        frac = np.nan_to_num((2 * gx * gy * hxy - gx ** 2 * hyy - gy ** 2 * hxx) / denominator)
    npix, dnu = nu.size, np.diff(bins)
    v0 = np.array([np.sum(nu > t) for t in bins[:-1]]) / npix
    masks = [(nu > lo) & (nu < hi) for lo, hi in zip(bins[:-1], bins[1:])]
    v1 = np.array([np.sqrt(norm2)[m].sum() / (4 * d * npix) for m, d in zip(masks, dnu)])
    v2 = np.array([frac[m].sum() / (2 * np.pi * d * npix) for m, d in zip(masks, dnu)])
    return v0, v1, v2, sigma1


@pytest.mark.parametrize("shape", [(2, 2), (2, 7), (9, 2), (31, 47), (80, 33)])
def test_doubled_gradients_are_twice_numpy_gradient_bit_for_bit(shape):
    f = np.random.default_rng(0).standard_normal(shape)
    assert np.array_equal(doubled_gradient_rows(f) / 2, np.gradient(f, axis=0))
    assert np.array_equal(doubled_gradient_columns(f) / 2, np.gradient(f, axis=1))


@pytest.mark.parametrize("shape", [(2, 2), (3, 5), (33, 34), (100, 65), (131, 90)])
@pytest.mark.parametrize("bins", [BINS, np.array([-2.0, -0.3, 0.4, 2.5])])
def test_equals_the_literal_estimator(shape, bins):
    nu = gaussian_filter(np.random.default_rng(sum(shape)).standard_normal(shape), 1.5)
    nu /= nu.std()
    nu.flat[::7] = np.round(nu.flat[::7] * 2) / 2      # pixels exactly on thresholds
    nu[-2:, -3:] = 0.25                                  # a flat corner: zero gradients (0/0 -> 0)
    ours = minkowski_functionals(nu, bins)
    reference = literal_minkowski(nu, bins)
    assert np.array_equal(ours[0], reference[0])
    for mine, theirs in zip(ours[1:], reference[1:]):
        assert np.allclose(mine, theirs, rtol=1e-12, atol=1e-17)


def test_block_edges_do_not_matter(monkeypatch):
    nu = gaussian_filter(np.random.default_rng(1).standard_normal((70, 50)), 2.0)
    nu /= nu.std()
    reference = minkowski_functionals(nu, BINS)
    for block_rows in (1, 2, 5, 69, 200):
        monkeypatch.setattr(minkowski_module, "BLOCK_ROWS", block_rows)
        for mine, theirs in zip(minkowski_functionals(nu, BINS), reference):
            assert np.allclose(mine, theirs, rtol=1e-12, atol=1e-17)


def gaussian_theory(sigma1, bins, mu=0.0):
    """Bin-averaged Gaussian MFs for nu with unit variance, mean mu and gradient rms sigma1 (pixel
    units), with x = nu - mu: V0 = erfc(x/sqrt2)/2 at the lower edges, V1 = sigma1/(8 sqrt2) e^{-x^2/2},
    V2 = sigma1^2/(2 (2 pi)^{3/2}) x e^{-x^2/2}.

    V1: the estimator sums |grad nu| / 4 over the pixels of a bin; the gradient of a Gaussian field
    is independent of nu at the same point and has two components of variance sigma1^2/2, so
    E|grad nu| = (sqrt(pi)/2) sigma1 and V1 = (sqrt(pi)/2) sigma1 / 4 * e^{-x^2/2}/sqrt(2 pi).
    V2: per unit threshold and area, 1/(2 pi) times the integrated contour curvature, whose Gaussian
    expectation (Tomita 1986) gives sigma1^2/(2 (2 pi)^{3/2}) x e^{-x^2/2} (pixel units).
    Each is averaged over its bin [lo, hi) as the estimator does (V0 is taken at lo)."""
    lo, hi, dnu = bins[:-1] - mu, bins[1:] - mu, np.diff(bins)
    v0 = 0.5 * erfc(lo / np.sqrt(2))
    v1 = sigma1 / (8 * np.sqrt(2)) * np.sqrt(np.pi / 2) * (erf(hi / np.sqrt(2)) - erf(lo / np.sqrt(2))) / dnu
    v2 = sigma1 ** 2 / (2 * (2 * np.pi) ** 1.5) * (np.exp(-lo ** 2 / 2) - np.exp(-hi ** 2 / 2)) / dnu
    return v0, v1, v2


def test_gaussian_random_field_matches_gaussian_theory():
    """Periodic smoothed white noise (no boundary effects), 4 seeds averaged.

    With central differences the expectations are exact (E|grad| and E[hessian | nu] only involve
    the measured sigma1), so what remains is sampling noise. Calibration runs with these sizes gave
    seed-to-seed standard deviations of at most 0.004 (V0), 0.009 (V1 / max V1) and 0.025
    (V2 / max |V2|) per bin, i.e. standard errors of the 4-seed mean of 0.002, 0.0045 and 0.0125;
    the tolerances are about 5 of those. A wrong factor in V1 or V2 (2, pi, sqrt2) or a sign error
    would miss by 30% or more.
    """
    measured = []
    for seed in range(4):
        field = gaussian_filter(np.random.default_rng(100 + seed).standard_normal((512, 512)), 2.0, mode="wrap")
        v0, v1, v2, sigma1 = minkowski_functionals(field / field.std(), BINS)
        t0, t1, t2 = gaussian_theory(sigma1, BINS)
        measured.append((v0 - t0, (v1 - t1) / t1.max(), (v2 - t2) / np.abs(t2).max()))
    deviation = np.mean(measured, axis=0)
    assert np.all(np.abs(deviation[0]) < 0.01)
    assert np.all(np.abs(deviation[1]) < 0.025)
    assert np.all(np.abs(deviation[2]) < 0.06)


def test_production_patch_at_2_arcmin_matches_gaussian_theory():
    """Production scale through the production route: 2048^2 pixels on 10 deg (600/2048 arcmin per
    pixel), smoothed at 2 arcmin (6.827 px) by ``analyse_patch`` (reflect boundaries, SCIENCE.md
    §5.2), nu = s / std(s) without mean subtraction, V0..V2 in the production nu bins.

    The field is white noise (a Gaussian random field with a flat spectrum) plus a constant offset:
    it has no periodicity to hide, so the only boundaries are the pipeline's own, and the offset
    (nu mean ~0.25) checks that the mean is kept. sigma0, sigma1 and the nu mean are measured
    independently with scipy's real-space filter and np.gradient (and must equal the pipeline's
    sigma0, sigma1), and the theory is evaluated with them. Calibration: over 16 single maps the
    per-bin standard deviations of the deviation were below 0.002 (V0), 0.004 (V1 / max V1) and
    0.021 (V2 / max |V2|), means consistent with 0; averaging 4 maps, 6 disjoint groups had largest
    deviations of at most 0.0015, 0.0035 and 0.011 (0.0007, 0.0027, 0.011 for these seeds). The
    tolerances, 0.5 %, 1 % and 5 % of each functional's maximum, are about 5 standard errors. Theory
    without the nu mean misses by 0.09 (V0), 0.14 (V1), 0.36 (V2); a factor sqrt2, 2 or pi in V1 or
    V2 or a sign of V2 misses by 30 % or more; a wrong smoothing scale fails the sigma checks.
    """
    xsize, side_deg, smoothing_arcmin = 2048, 10.0, 2.0
    sigma_px = smoothing_arcmin / (side_deg * 60.0 / xsize)
    settings = PatchAnalysisSettings(patch_size_deg=side_deg, xsize=xsize, ngal_list=(0,),
                                     smoothing_arcmin=(smoothing_arcmin,), statistics=("minkowski",))
    base = "smoothed_statistics/ngal_0/sl_2"
    deviations = []
    for seed in range(4):
        patch = 2e-4 + np.random.default_rng(2048 + seed).normal(0.0, 0.02, (xsize, xsize))
        stats = analyse_patch(patch, settings, lambda ngal: pytest.fail("ngal 0 needs no noise"))
        smoothed = gaussian_filter(patch, sigma_px, mode="reflect", truncate=4.0)
        sigma0 = smoothed.std()
        nu = smoothed / sigma0
        gy, gx = np.gradient(nu)
        sigma1 = np.sqrt(np.mean(gx ** 2 + gy ** 2))
        assert stats[f"{base}/sigma/0"] == pytest.approx(sigma0, rel=1e-10)
        assert stats[f"{base}/sigma/1"] == pytest.approx(sigma1, rel=1e-10)
        theory = gaussian_theory(sigma1, BINS, mu=nu.mean())
        deviations.append([(stats[f"{base}/minkowski/v{i}"] - expected) / np.abs(expected).max()
                           for i, expected in enumerate(theory)])
    deviation = np.mean(deviations, axis=0)
    assert np.all(np.abs(deviation[0]) < 0.005), deviation[0]
    assert np.all(np.abs(deviation[1]) < 0.01), deviation[1]
    assert np.all(np.abs(deviation[2]) < 0.05), deviation[2]


def test_sigma1_of_a_plane_wave():
    """nu = sin(k x): np.gradient gives sin(k) cos(k x) inside, so sigma1 = sin(k)/sqrt(2) up to edges."""
    k = 2 * np.pi / 64
    nu = np.tile(np.sin(k * np.arange(640)), (64, 1))
    sigma1 = minkowski_functionals(nu, BINS)[3]
    assert sigma1 == pytest.approx(np.sin(k) / np.sqrt(2), rel=2e-3)


@pytest.mark.parametrize("nu_map", [np.zeros((1, 5)), np.zeros(9), np.array([[0.0, 1.0], [np.inf, 0.0]])])
def test_rejects_bad_maps(nu_map):
    with pytest.raises(ValueError):
        minkowski_functionals(nu_map, BINS)


def test_rejects_bad_bins():
    with pytest.raises(ValueError):
        minkowski_functionals(np.zeros((4, 4)), [0.0])
