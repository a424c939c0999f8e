"""One-point PDF of nu maps: np.histogram(density=True) conventions (SCIENCE.md §6.4)."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.special import ndtr

from lensing_ssc.science.statistics.pdf import exceedance_counts, pdf, threshold_levels

BINS = np.linspace(-4.0, 4.0, 9)


@pytest.mark.parametrize("bins", [BINS, np.array([-1.5, -0.2, 0.0, 0.7, 3.0]), np.linspace(-3, 3, 13)])
def test_equals_numpy_histogram_density(bins):
    values = np.random.default_rng(0).normal(0.1, 1.6, (157, 203))
    # values exactly on edges (incl. the closed last edge) and outside the range
    values.flat[:bins.size] = bins
    values.flat[bins.size:bins.size + 3] = [bins[-1], bins[0], 9.0]
    expected = np.histogram(values, bins, density=True)[0]
    assert np.array_equal(pdf(values, bins), expected)


def test_large_map_spans_several_chunks():
    values = np.random.default_rng(1).standard_normal((600, 700))
    assert np.array_equal(pdf(values, BINS), np.histogram(values, BINS, density=True)[0])


def test_normalised_over_the_bin_range():
    values = np.random.default_rng(2).normal(0.0, 3.0, (100, 100))  # many pixels outside [-4, 4]
    density = pdf(values, BINS)
    assert np.sum(density * np.diff(BINS)) == pytest.approx(1.0, abs=1e-14)


def test_gaussian_random_field_matches_the_normal_density():
    """nu of a smoothed white-noise field is N(0, 1): each bin holds the normal probability."""
    field = gaussian_filter(np.random.default_rng(3).standard_normal((512, 512)), 1.5, mode="wrap")
    nu = field / field.std()
    probability = np.diff(ndtr(BINS))
    expected = probability / probability.sum() / np.diff(BINS)
    # ~512^2 / (4 pi 1.5^2) = 9300 independent pixels: 5 binomial standard errors per bin
    tolerance = 5 * np.sqrt(probability * (1 - probability) / 9300) + 1e-4
    assert np.all(np.abs(pdf(nu, BINS) - expected) < tolerance)


def test_no_pixel_in_range_gives_nan():
    assert np.all(np.isnan(pdf(np.full((4, 4), 10.0), BINS)))


def test_levels_separate_values_on_edges():
    edges = np.array([-1.0, 0.0, 2.0])
    values = np.array([-3.0, -1.0, -0.5, 0.0, 1.0, 2.0, 5.0])
    assert threshold_levels(values, edges).tolist() == [0, 1, 2, 3, 4, 5, 6]
    counts = np.bincount(threshold_levels(values, edges), minlength=7)
    assert exceedance_counts(counts).tolist() == [np.sum(values > e) for e in edges]


@pytest.mark.parametrize("bins", [[1.0], [0.0, 0.0, 1.0], [1.0, 0.0], [0.0, np.nan], [[0.0, 1.0]]])
def test_rejects_bad_bins(bins):
    with pytest.raises(ValueError):
        pdf(np.zeros((3, 3)), bins)


def test_rejects_non_finite_maps():
    with pytest.raises(ValueError):
        pdf(np.array([[0.0, np.nan]]), BINS)
