"""Peak and minimum counts: lenstools locatePeaks + exclude_edges conventions (SCIENCE.md §6.4)."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, maximum_filter, minimum_filter
from scipy.stats import chi2

from lensing_ssc.science.patch_analysis import PatchAnalysisSettings, analyse_patch
from lensing_ssc.science.smoothing import GaussianSmoother
from lensing_ssc.science.statistics import peaks as peaks_module
from lensing_ssc.science.statistics.peaks import minima_counts, peak_counts

BINS = np.linspace(-4.0, 4.0, 9)


def lenstools_peak_counts(nu, bins, patch_deg=10.0):
    """Transcription of lenstools' C ``peak_locations`` (periodic ``coordinate``, centre held in a C
    float) and LensingSSC's ``exclude_edges`` (positions through degrees and back) and normalisation."""
    n = nu.shape[0]
    heights, positions = [], []
    for i in range(n):
        for j in range(n):
            centre = float(np.float32(nu[i, j]))
            if all(centre > nu[(i + di) % n, (j + dj) % n]
                   for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj):
                if bins[0] <= nu[i, j] < bins[-1]:
                    heights.append(nu[i, j])
                    positions.append((i, j))
    pixels = np.array(positions, dtype=float).reshape(-1, 2) * (patch_deg / n) * n / patch_deg
    keep = np.all((pixels > 0) & (pixels < n - 1), axis=1)
    counts = np.histogram(np.array(heights)[keep], bins)[0]
    return counts / np.sum(counts) / (bins[1] - bins[0])


def vectorised_peak_counts(nu, bins):
    """8 shifted comparisons on the periodically padded map (works for non-square maps)."""
    n0, n1 = nu.shape
    wrapped = np.pad(nu, 1, mode="wrap")
    centre = nu.astype(np.float32).astype(np.float64)
    is_peak = np.ones(nu.shape, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_peak &= centre > wrapped[1 + di:1 + di + n0, 1 + dj:1 + dj + n1]
    is_peak[[0, -1], :] = False
    is_peak[:, [0, -1]] = False
    heights = nu[is_peak]
    counts = np.histogram(heights[(heights >= bins[0]) & (heights < bins[-1])], bins)[0]
    return counts / counts.sum() / np.diff(bins)


def hand_built_map():
    nu = np.full((9, 9), -0.5)        # plateau: equal neighbours are never peaks
    nu[2, 2] = 1.5                    # interior peak, bin [1, 2)
    nu[6, 6] = 3.5                    # interior peak, bin [3, 4)
    nu[3:6, 3:6] = -4.5
    nu[4, 4] = -4.0                   # interior peak at the lower edge: bin [-4, -3)
    nu[6, 2] = 4.0                    # interior peak at the upper edge: h < 4 fails
    nu[0, 4] = 2.5                    # border peak: excluded
    nu[8, 8] = 3.0                    # corner peak: excluded
    nu[1, 7], nu[0, 7] = 2.2, 2.8     # interior pixel beaten by its (real) border neighbour
    nu[4, 8], nu[4, 0] = 2.0, 1.2     # right-border peak through its wrapped neighbour: excluded
    nu[7, 4] = nu[7, 5] = 1.25        # two equal maxima (exact in float32): not strict
    return nu


def test_hand_built_map():
    expected = np.array([1, 0, 0, 0, 0, 1, 0, 1]) / 3.0
    assert np.array_equal(peak_counts(hand_built_map(), BINS), expected)
    assert np.array_equal(lenstools_peak_counts(hand_built_map(), BINS), expected)


def test_hand_built_minima():
    nu = np.zeros((6, 6))
    nu[2, 3] = -1.5                   # interior minimum: -nu = 1.5 in -nu bin 5 -> entry 2 after reversal
    nu[4, 1] = -3.0                   # on an edge: -nu = 3.0 in -nu bin 7 -> entry 0, i.e. (-4, -3]
    nu[0, 2] = -2.0                   # border minimum: excluded
    expected = np.zeros(8)
    expected[[0, 2]] = 0.5
    assert np.array_equal(minima_counts(nu, BINS), expected)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("sigma", [0.0, 1.2])
def test_equals_lenstools_transcription(seed, sigma):
    nu = np.random.default_rng(seed).standard_normal((40, 40))
    if sigma:
        nu = gaussian_filter(nu, sigma)
    nu /= nu.std()
    nu.flat[::11] = np.round(nu.flat[::11] * 2) / 2   # ties and heights on bin edges
    assert np.allclose(peak_counts(nu, BINS), lenstools_peak_counts(nu, BINS), rtol=0, atol=1e-15)
    assert np.allclose(minima_counts(nu, BINS), lenstools_peak_counts(-nu, BINS)[::-1], rtol=0, atol=1e-15)


@pytest.mark.parametrize("shape", [(300, 300), (150, 263), (131, 70)])
def test_equals_shifted_comparisons_over_several_blocks(shape):
    nu = gaussian_filter(np.random.default_rng(9).standard_normal(shape), 2.0)
    nu /= nu.std()
    assert shape[0] > 2 * peaks_module.BLOCK_ROWS
    assert np.allclose(peak_counts(nu, BINS), vectorised_peak_counts(nu, BINS), rtol=0, atol=1e-15)
    assert np.allclose(minima_counts(nu, BINS), vectorised_peak_counts(-nu, BINS)[::-1], rtol=0, atol=1e-15)


def test_minima_are_reversed_peaks_of_the_negated_map():
    nu = gaussian_filter(np.random.default_rng(4).standard_normal((120, 120)), 1.5)
    nu /= nu.std()
    assert np.array_equal(minima_counts(nu, BINS), peak_counts(-nu, BINS)[::-1])


def test_centre_is_compared_in_float32_as_lenstools_does():
    # float32(0.1) > 0.1, so on a plateau of 0.1 every interior pixel is a lenstools "peak" ...
    assert np.array_equal(peak_counts(np.full((6, 6), 0.1), BINS), [0, 0, 0, 0, 1, 0, 0, 0])
    # ... while 0.5 is exact in float32 and the plateau has none (0/0 -> NaN, as the original).
    assert np.all(np.isnan(peak_counts(np.full((6, 6), 0.5), BINS)))


def test_distribution_is_normalised():
    nu = gaussian_filter(np.random.default_rng(5).standard_normal((200, 200)), 2.0)
    nu /= nu.std()
    for counts in (peak_counts(nu, BINS), minima_counts(nu, BINS)):
        assert np.sum(counts * np.diff(BINS)) == pytest.approx(1.0, abs=1e-14)


def extremum_counts(nu, bins):
    """Histogram counts of the heights nu of the interior strict maxima and of -nu at the interior
    strict minima (8 neighbours, centre rounded to float32 as lenstools does, h < bins[-1])."""
    ring = np.ones((3, 3), dtype=bool)
    ring[1, 1] = False
    inner = nu[1:-1, 1:-1]
    centre = inner.astype(np.float32).astype(np.float64)
    peaks = inner[centre > maximum_filter(nu, footprint=ring)[1:-1, 1:-1]]
    minima = -inner[centre < minimum_filter(nu, footprint=ring)[1:-1, 1:-1]]
    return tuple(np.histogram(h[h < bins[-1]], bins)[0] for h in (peaks, minima))


def poisson_chi2(first, second):
    """chi^2 = sum (a - b)^2 / (a + b) over bins with counts, and its number of terms."""
    used = first + second > 0
    return float(np.sum((first - second)[used] ** 2 / (first + second)[used])), int(used.sum())


def test_peaks_and_reversed_minima_of_a_gaussian_field_agree_within_poisson_noise():
    """A Gaussian field is symmetric under nu -> -nu (the pipeline's nu = s / std(s) negates with
    it), so the expected peak counts per nu bin equal the minima counts of -nu, i.e. the stored
    minima read backwards. Production patch (2048^2, 10 deg), scales (2, 5, 8, 10 arcmin) and nu
    bins through ``analyse_patch``; the field is white noise, smoothed by the pipeline.

    The stored distributions must be the histograms counted here (scipy's 3x3 max/min filters on
    the map smoothed by ``GaussianSmoother``, which test_smoothing.py checks against scipy's
    ``gaussian_filter``) normalised, minima reversed; then per bin |P - Q| <= 4 sqrt(P + Q) and the
    chi^2 over bins must have a survival probability above 1e-4. Calibration over 40 maps: chi^2
    per bin 1.01-1.24 at the four scales (slightly above Poisson: peaks and minima of one map share
    its sigma0 and large modes), largest per-bin |P - Q| / sqrt(P + Q) 3.6, smallest survival
    probability 0.002 (this seed: 0.007, at 8 arcmin). Compared without the reversal (as a mix-up of
    the minima orientation would do), the same counts differ by far more than Poisson noise at every
    scale; the test checks that too, so it keeps its power.
    """
    settings = PatchAnalysisSettings(ngal_list=(0,), statistics=("peak_counts", "minima"))
    edges, xsize = settings.nu_edges, settings.xsize
    patch = np.random.default_rng(11).normal(0.0, 0.02, (xsize, xsize))
    stats = analyse_patch(patch, settings, lambda ngal: pytest.fail("ngal 0 needs no noise"))
    smoother = GaussianSmoother(patch)
    for smoothing_arcmin in settings.smoothing_arcmin:
        base = f"smoothed_statistics/ngal_0/sl_{smoothing_arcmin:g}"
        smoothed = smoother.smooth(smoothing_arcmin / (settings.patch_size_deg * 60.0 / xsize))
        peaks, minima = extremum_counts(smoothed / smoothed.std(), edges)
        np.testing.assert_allclose(stats[f"{base}/peaks"], peaks / peaks.sum() / np.diff(edges), rtol=1e-12)
        np.testing.assert_allclose(stats[f"{base}/minima"], (minima / minima.sum() / np.diff(edges))[::-1],
                                   rtol=1e-12)
        counts = (smoothing_arcmin, peaks, minima)
        assert peaks.sum() > 100 and minima.sum() > 100, counts
        assert np.all(np.abs(peaks - minima) <= 4 * np.sqrt(peaks + minima)), counts
        assert chi2.sf(*poisson_chi2(peaks, minima)) > 1e-4, counts
        assert chi2.sf(*poisson_chi2(peaks, minima[::-1])) < 1e-10, counts


@pytest.mark.parametrize("nu_map", [np.zeros((2, 5)), np.zeros(9),
                                    np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0]])])
def test_rejects_bad_maps(nu_map):
    with pytest.raises(ValueError):
        peak_counts(nu_map, BINS)
    with pytest.raises(ValueError):
        minima_counts(nu_map, BINS)


def test_rejects_bad_bins():
    with pytest.raises(ValueError):
        peak_counts(np.zeros((4, 4)), [1.0, 0.0])
