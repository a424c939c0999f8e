"""Smoothed-map statistics of one noisy patch at several smoothing scales (SCIENCE.md §6.4).

Per scale: ``s = gaussian_filter(patch, sigma_px)``, ``sigma0 = std(s)`` (population std over the
whole patch), ``nu = s / sigma0`` (no mean subtraction), then the PDF, peak and minimum
distributions, Minkowski functionals and the gradient rms ``sigma1`` of ``nu``.

Work per patch: one forward transform of the patch for all scales
(:class:`~lensing_ssc.science.smoothing.GaussianSmoother`), then per scale one inverse transform,
one ``std``, one blocked sweep for sigma1, V0-V2 and the PDF
(:func:`.minkowski.minkowski_sweep`) and one blocked sweep for peaks and minima
(:func:`.peaks.extrema_heights`).
"""
import numpy as np

from ..smoothing import GaussianSmoother
from .binning import validate_edges
from .minkowski import minkowski_sweep
from .pdf import pdf_from_level_counts
from .peaks import extrema_heights, normalised_counts

#: Statistic groups :func:`smoothed_statistics` can compute.
STATISTICS = ("pdf", "peaks", "minima", "minkowski")


def smoothed_statistics(noisy_patch, sigma_px_list, bins, which=STATISTICS):
    """PDF, peaks, minima and Minkowski functionals of a patch smoothed at several scales.

    Parameters
    ----------
    noisy_patch : array_like, shape (N0, N1), N0, N1 >= 3
        Finite, unsmoothed convergence patch (shape noise already added), any real dtype.
    sigma_px_list : sequence of float
        Gaussian smoothing sigmas [pixels], each >= 0 (e.g. 6.827, 17.07, 27.31, 34.13 for
        2, 5, 8, 10 arcmin on 10 deg / 2048 px; see ``smoothing.sigma_pixels``).
    bins : array_like, shape (nbins + 1,)
        Strictly increasing signal-to-noise thresholds, e.g. ``linspace(-4, 4, 9)``.
    which : iterable of str
        Subset of ``("pdf", "peaks", "minima", "minkowski")``.

    Returns
    -------
    list of dict, one per sigma in order
        Keys ``"sigma0"`` (float, std of the smoothed kappa) and ``"sigma1"`` (float, gradient rms
        of nu [1/pixel]) always; ``"pdf"``, ``"peaks"``, ``"minima"`` and ``"v0"``, ``"v1"``,
        ``"v2"`` (float64 arrays of shape (nbins,)) as requested.

    Raises
    ------
    ValueError
        On bad arguments, or when a smoothed patch has zero variance (a constant patch, e.g. the
        all-zero result of a failed extraction, has no signal-to-noise map).
    """
    edges = validate_edges(bins, "bins")
    wanted = _validated_which(which)
    patch = np.asarray(noisy_patch)
    if patch.ndim != 2 or min(patch.shape) < 3:
        raise ValueError(f"noisy_patch: expected a 2-d array of at least 3 x 3 pixels, got shape {patch.shape}")
    sigmas = np.asarray(sigma_px_list, dtype=np.float64)
    if sigmas.ndim != 1 or sigmas.size == 0 or not np.all(np.isfinite(sigmas)) or np.any(sigmas < 0):
        raise ValueError("sigma_px_list: expected a non-empty sequence of finite sigmas >= 0, "
                         f"got {sigma_px_list!r}")
    smoother = GaussianSmoother(patch)  # checks finiteness
    results = []
    for sigma in sigmas:
        nu = smoother.smooth(sigma)
        sigma0 = float(nu.std())
        if not sigma0 > 0:
            raise ValueError(f"noisy_patch: smoothed at sigma_px={sigma} it is constant (std 0); "
                             "expected a patch with signal or noise")
        nu /= sigma0
        sweep = minkowski_sweep(nu, edges, functionals="minkowski" in wanted)
        result = {"sigma0": sigma0, "sigma1": sweep.sigma1}
        if "pdf" in wanted:
            result["pdf"] = pdf_from_level_counts(sweep.level_counts, edges)
        if "peaks" in wanted or "minima" in wanted:
            peak_heights, minimum_heights = extrema_heights(
                nu, edges, maxima="peaks" in wanted, minima="minima" in wanted)
            if "peaks" in wanted:
                result["peaks"] = normalised_counts(peak_heights, edges)
            if "minima" in wanted:
                result["minima"] = normalised_counts(minimum_heights, edges)[::-1]
        if "minkowski" in wanted:
            result.update(v0=sweep.v0, v1=sweep.v1, v2=sweep.v2)
        results.append(result)
    return results


def _validated_which(which):
    """``which`` as a set of known statistic names, else ValueError."""
    names = (which,) if isinstance(which, str) else tuple(which)
    unknown = [name for name in names if name not in STATISTICS]
    if unknown:
        raise ValueError(f"which: unknown statistics {unknown}; expected a subset of {STATISTICS}")
    return set(names)
