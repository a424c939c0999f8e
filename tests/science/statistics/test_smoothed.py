"""Smoothed-map statistics of a noisy patch at several scales (SCIENCE.md §5.2, §6.4)."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from lensing_ssc.science.statistics.minkowski import minkowski_functionals
from lensing_ssc.science.statistics.peaks import minima_counts, peak_counts
from lensing_ssc.science.statistics.smoothed import smoothed_statistics

BINS = np.linspace(-4.0, 4.0, 9)
SIGMAS = [1.3, 2.7, 5.4]


def original_statistics(patch, sigma, bins):
    """The original per-scale recipe with scipy's real-space filter; peaks and MFs by the standalone
    functions, which test_peaks.py and test_minkowski.py check against literal transcriptions."""
    smoothed = gaussian_filter(patch.astype(np.float64), sigma, mode="reflect", truncate=4.0)
    sigma0 = smoothed.std()
    nu = smoothed / sigma0
    v0, v1, v2, sigma1 = minkowski_functionals(nu, bins)
    return dict(sigma0=sigma0, sigma1=sigma1, pdf=np.histogram(nu, bins, density=True)[0],
                peaks=peak_counts(nu, bins), minima=minima_counts(nu, bins), v0=v0, v1=v1, v2=v2)


def noisy_patch(shape=(96, 96), seed=0):
    """A smooth 'kappa' field with a mean offset, plus white shape noise, in float32 like the patches."""
    rng = np.random.default_rng(seed)
    kappa = 0.002 + gaussian_filter(rng.standard_normal(shape), 4.0) * 0.05
    return (kappa + rng.normal(0.0, 0.02, shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(96, 96), (70, 101)])
def test_equals_the_original_recipe(shape):
    patch = noisy_patch(shape)
    results = smoothed_statistics(patch, SIGMAS, BINS)
    assert len(results) == len(SIGMAS)
    for result, sigma in zip(results, SIGMAS):
        reference = original_statistics(patch, sigma, BINS)
        assert set(result) == set(reference)
        assert result["sigma0"] == pytest.approx(reference["sigma0"], rel=1e-12)
        assert result["sigma1"] == pytest.approx(reference["sigma1"], rel=1e-12)
        for key in ("pdf", "peaks", "minima", "v0"):
            assert np.array_equal(result[key], reference[key]), key
        for key in ("v1", "v2"):
            assert np.allclose(result[key], reference[key], rtol=1e-10, atol=1e-16), key


def test_nu_keeps_the_patch_mean():
    """nu = smoothed / sigma0 without mean subtraction: a positive offset shifts the PDF up."""
    patch = np.random.default_rng(1).normal(0.0, 1.0, (128, 128))
    centred = smoothed_statistics(patch, [2.0], BINS, which=["pdf"])[0]
    shifted = smoothed_statistics(patch + 0.5, [2.0], BINS, which=["pdf"])[0]
    assert shifted["sigma0"] == pytest.approx(centred["sigma0"], rel=1e-12)
    mean_nu = lambda r: np.sum(r["pdf"] * np.diff(BINS) * 0.5 * (BINS[1:] + BINS[:-1]))
    assert mean_nu(shifted) > mean_nu(centred) + 1.0


@pytest.mark.parametrize("which", [("pdf",), ("peaks",), ("minima",), ("minkowski",), ("peaks", "minkowski"),
                                   "pdf"])
def test_which_selects_statistics(which):
    patch = noisy_patch()
    full = smoothed_statistics(patch, [2.0], BINS)[0]
    part = smoothed_statistics(patch, [2.0], BINS, which=which)[0]
    names = {which} if isinstance(which, str) else set(which)
    functionals = {"v0", "v1", "v2"} if "minkowski" in names else set()
    expected = {"sigma0", "sigma1"} | (names - {"minkowski"}) | functionals
    assert set(part) == expected
    for key in part:
        assert np.array_equal(part[key], full[key]), key


def test_zero_smoothing_uses_the_patch_itself():
    patch = noisy_patch()
    result = smoothed_statistics(patch, [0.0], BINS, which=["pdf"])[0]
    assert result["sigma0"] == pytest.approx(patch.astype(np.float64).std(), rel=1e-15)


def test_constant_patch_is_an_error():
    with pytest.raises(ValueError, match="noisy_patch"):
        smoothed_statistics(np.zeros((32, 32), dtype=np.float32), [2.0], BINS)


@pytest.mark.parametrize("kwargs", [dict(noisy_patch=np.zeros((2, 8))), dict(noisy_patch=np.full((8, 8), np.nan)),
                                    dict(sigma_px_list=[]), dict(sigma_px_list=[-1.0]),
                                    dict(sigma_px_list=[np.inf]),
                                    dict(bins=[0.0, 0.0]), dict(which=["pdf", "moments"])])
def test_rejects_bad_arguments(kwargs):
    arguments = dict(noisy_patch=noisy_patch((16, 16)), sigma_px_list=[1.0], bins=BINS, which=("pdf",))
    arguments.update(kwargs)
    with pytest.raises(ValueError):
        smoothed_statistics(**arguments)
