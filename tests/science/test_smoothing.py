"""Gaussian smoothing: equal to scipy.ndimage.gaussian_filter(mode='reflect', truncate=4) (SCIENCE.md §5.2)."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from lensing_ssc.science.smoothing import GaussianSmoother, gaussian_kernel1d, gaussian_smooth, sigma_pixels


def _scipy(image, sigma, truncate=4.0):
    return gaussian_filter(np.asarray(image, dtype=np.float64), sigma, mode="reflect", truncate=truncate)


def _assert_same(ours, reference, image):
    # FFT-type rounding: a few 1e-16 of the image scale; the brief asks ~1e-12.
    assert ours.dtype == np.float64 and ours.shape == reference.shape
    assert np.max(np.abs(ours - reference)) <= 1e-12 * np.max(np.abs(image))


@pytest.mark.parametrize("shape", [(64, 64), (63, 63), (64, 65), (37, 100), (100, 37), (1, 9), (8, 1)])
@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5, 6.827, 17.07])
def test_matches_scipy_gaussian_filter(shape, sigma):
    image = np.random.default_rng([*shape, int(sigma * 1000)]).normal(0.3, 2.0, shape)
    _assert_same(gaussian_smooth(image, sigma), _scipy(image, sigma), image)


@pytest.mark.parametrize("shape, sigma", [((40, 40), 10.0), ((31, 47), 12.0), ((30, 30), 30.0),
                                          ((24, 40), 75.0), ((16, 16), 500.0)])
def test_matches_scipy_for_kernels_as_wide_as_the_image(shape, sigma):
    """radius = int(4 sigma + 0.5) reaches or exceeds the image: repeated reflection."""
    image = np.random.default_rng(7).standard_normal(shape)
    _assert_same(gaussian_smooth(image, sigma), _scipy(image, sigma), image)


def test_matches_scipy_with_other_truncation():
    image = np.random.default_rng(2).standard_normal((50, 43))
    _assert_same(gaussian_smooth(image, 3.3, truncate=2.0), _scipy(image, 3.3, truncate=2.0), image)


def test_float32_input_is_smoothed_in_float64():
    image = np.random.default_rng(3).standard_normal((48, 48)).astype(np.float32)
    _assert_same(gaussian_smooth(image, 2.0), _scipy(image.astype(np.float64), 2.0), image)


def test_one_transform_serves_several_scales():
    image = np.random.default_rng(4).standard_normal((96, 80))
    smoother = GaussianSmoother(image)
    for sigma in (6.827, 1.5, 17.07, 1.5):
        _assert_same(smoother.smooth(sigma), _scipy(image, sigma), image)


def test_zero_sigma_returns_the_image():
    image = np.random.default_rng(5).standard_normal((10, 12))
    out = gaussian_smooth(image, 0.0)
    assert np.array_equal(out, image) and out is not image


def test_constant_image_stays_constant():
    image = np.full((45, 70), -3.25)
    for sigma in (0.7, 5.0, 40.0):
        assert np.max(np.abs(gaussian_smooth(image, sigma) + 3.25)) < 1e-14


def test_kernel_is_scipys():
    kernel = gaussian_kernel1d(6.827, int(4 * 6.827 + 0.5))
    assert kernel.size == 2 * 27 + 1
    assert kernel.sum() == pytest.approx(1.0, abs=1e-15)
    assert np.array_equal(kernel, kernel[::-1])
    # The impulse response of scipy's filter is its kernel.
    impulse = np.zeros(101)
    impulse[50] = 1.0
    response = gaussian_filter(impulse, 6.827, mode="reflect", truncate=4.0)
    assert np.allclose(response[50 - 27:50 + 28], kernel, rtol=0, atol=1e-17)


@pytest.mark.parametrize("sigma_px", [2.0, 3.0])
def test_smoothed_white_noise_has_the_expected_rms(sigma_px):
    """SCIENCE.md §5.2: white noise of std s smoothed by sigma_px has std s / sqrt(4 pi sigma_px^2)."""
    s = 0.3354
    noise = np.random.default_rng(11).normal(0.0, s, (1024, 1024))
    border = int(4 * sigma_px) + 1  # reflection raises the variance near the edges: leave them out
    smoothed = gaussian_smooth(noise, sigma_px)[border:-border, border:-border]
    # ~ (1000^2 / (4 pi sigma^2)) independent samples: relative standard error <= 0.8%
    assert smoothed.std() == pytest.approx(s / np.sqrt(4 * np.pi * sigma_px ** 2), rel=0.03)


def test_sigma_pixels_production_scales():
    assert [round(sigma_pixels(sl, 10, 2048), 2) for sl in (2, 5, 8, 10)] == [6.83, 17.07, 27.31, 34.13]
    assert sigma_pixels(2, 10, 2048) == pytest.approx(2 * 2048 / 600, rel=1e-15)
    assert sigma_pixels(5, 5, 1024) == pytest.approx(sigma_pixels(5, 10, 2048), rel=1e-15)


@pytest.mark.parametrize("args", [(-1, 10, 2048), (2, 0, 2048), (2, 10, 0), (2, 10, 20.5),
                                  (float("nan"), 10, 2048)])
def test_sigma_pixels_rejects_bad_input(args):
    with pytest.raises(ValueError):
        sigma_pixels(*args)


@pytest.mark.parametrize("image", [np.zeros(5), np.zeros((2, 2, 2)), np.zeros((0, 3)),
                                   np.array([[1.0, np.nan]]), np.array([[1.0, np.inf]]), np.array([[1 + 1j]])])
def test_rejects_bad_images(image):
    with pytest.raises(ValueError):
        GaussianSmoother(image)


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), float("inf")])
def test_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError):
        gaussian_smooth(np.zeros((4, 4)), sigma)


def test_rejects_bad_truncate():
    with pytest.raises(ValueError):
        GaussianSmoother(np.zeros((4, 4)), truncate=0.0)
