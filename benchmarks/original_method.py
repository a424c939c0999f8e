"""The original analysis method (SCIENCE.md §5–6), written out literally: the benchmarks' baseline.

This is what LensingSSC's ``PatchAnalyzer`` did per patch with lenstools 1.2, numpy and scipy, one
statistic at a time, so the benchmarks can time it next to ``lensing_ssc`` on the same machine in
the same run and check that both give the same numbers:

* power spectrum: ``np.fft.rfft2`` of the noisy patch, then the azimuthal binning of lenstools' C
  ``azimuthal_rfft2`` (half-open bins ``(l_k, l_{k+1}]``, ``(theta_rad / N^2)^2`` normalisation);
* bispectra: a fresh ``np.fft.rfft2`` per call (as ``ConvergenceMap.bispectrum`` does), then
  lenstools' C ``bispectrum`` loop run mode by mode in Python over the first legs that can lie below
  ``l_edges[-1]`` (the C loop visits every mode and skips the others at once);
* per smoothing scale: ``scipy.ndimage.gaussian_filter`` (real space, ``mode='reflect'``,
  ``truncate=4``), ``std``, ``np.histogram(density=True)`` for the PDF, separate 8-neighbour peak
  and minimum passes (periodic neighbours, float32 centre, height range, 1-pixel border cut) and the
  ``np.gradient`` Minkowski functionals with one boolean mask per bin.

Not a library module: it lives with the benchmarks and is imported by them.
"""
import math
import time

import numpy as np
from scipy.ndimage import gaussian_filter

# Constants of lenstools' C rotator k1tok2_equilateral.
SIN120 = 0.8660254037844386
COS120 = -0.5
TAN120 = -1.7320508075688772

#: The three bispectra of the original analysis: name -> (configuration, folding ratio).
BISPECTRA = {"equilateral": ("equilateral", None), "isosceles": ("folded", 0.5), "squeezed": ("folded", 0.1)}


# ---------------------------------------------------------------------------------------------
# Smoothed-map statistics (one noisy patch, several scales)

def original_peaks(nu, bins):
    """lenstools locatePeaks + exclude_edges + normalised histogram, vectorised literally."""
    n0, n1 = nu.shape
    wrapped = np.pad(nu, 1, mode="wrap")
    centre = nu.astype(np.float32).astype(np.float64)
    is_peak = np.ones(nu.shape, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_peak &= centre > wrapped[1 + di:1 + di + n0, 1 + dj:1 + dj + n1]
    rows, cols = np.nonzero(is_peak & (nu >= bins[0]) & (nu < bins[-1]))
    keep = (rows > 0) & (rows < n0 - 1) & (cols > 0) & (cols < n1 - 1)
    counts = np.histogram(nu[rows[keep], cols[keep]], bins)[0]
    return counts / np.sum(counts) / (bins[1] - bins[0])


def original_minkowski(nu, bins):
    """The original's minkowski.py, operation for operation."""
    gy, gx = np.gradient(nu)
    hyy, _ = np.gradient(gy)
    hxy, hxx = np.gradient(gx)
    sigma1 = np.sqrt(np.mean(gy ** 2 + gx ** 2))
    denominator = gx ** 2 + gy ** 2
    s1 = np.sqrt(denominator)
    denominator = np.where(denominator == 0, np.nan, denominator)
    frac = np.nan_to_num((2.0 * gx * gy * hxy - gx ** 2 * hyy - gy ** 2 * hxx) / denominator)
    delta = np.diff(bins)
    npix = nu.size
    masks = [(nu > lo) & (nu < hi) for lo, hi in zip(bins[:-1], bins[1:])]
    v0 = np.array([np.sum(nu > t) for t in bins[:-1]]) / npix
    v1 = np.array([np.sum(s1[m]) / (4.0 * d * npix) for m, d in zip(masks, delta)])
    v2 = np.array([np.sum(frac[m]) / (2.0 * np.pi * d * npix) for m, d in zip(masks, delta)])
    return v0, v1, v2, sigma1


def original_smoothed_statistics(patch, sigmas, bins, timers):
    """Per-scale statistics the original way; adds CPU seconds per part to ``timers``.

    Returns one dict per sigma with keys sigma0, sigma1, pdf, peaks, minima, v0, v1, v2.
    """
    results = []
    data = patch.astype(np.float64)
    for sigma in sigmas:
        t0 = time.process_time()
        smoothed = gaussian_filter(data, sigma)
        sigma0 = smoothed.std()
        nu = smoothed / sigma0
        t1 = time.process_time()
        pdf = np.histogram(nu, bins, density=True)[0]
        t2 = time.process_time()
        peaks = original_peaks(nu, bins)
        minima = original_peaks(-nu, bins)[::-1]
        t3 = time.process_time()
        v0, v1, v2, sigma1 = original_minkowski(nu, bins)
        t4 = time.process_time()
        for part, seconds in zip(("smoothing", "pdf", "peaks+minima", "minkowski"),
                                 (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            timers[part] = timers.get(part, 0.0) + seconds
        results.append(dict(sigma0=sigma0, sigma1=sigma1, pdf=pdf, peaks=peaks, minima=minima,
                            v0=v0, v1=v1, v2=v2))
    return results


# ---------------------------------------------------------------------------------------------
# Spectra of the unsmoothed noisy patch

def original_power_spectrum(patch, patch_size_deg, l_edges):
    """``ConvergenceMap.powerSpectrum(l_edges)[1]``: np.fft.rfft2 + lenstools' azimuthal binning [sr]."""
    n = patch.shape[0]
    fourier = np.fft.rfft2(patch)
    lpix = 360.0 / patch_size_deg
    i = np.arange(n)
    lx = np.minimum(i, n - i) * lpix
    ly = np.arange(n // 2 + 1) * lpix
    ell = np.sqrt(lx[:, None] * lx[:, None] + ly[None, :] * ly[None, :])
    power = fourier.real * fourier.real + fourier.imag * fourier.imag
    normalization = (patch_size_deg * np.pi / 180.0 / (n * n)) ** 2
    result = np.zeros(len(l_edges) - 1)
    for k in range(len(l_edges) - 1):
        in_bin = (ell > l_edges[k]) & (ell <= l_edges[k + 1])
        hits = np.count_nonzero(in_bin)
        if hits:
            result[k] = normalization * power[in_bin].sum() / hits
    return result


def original_bispectrum(patch, patch_size_deg, l_edges, configuration, ratio=None):
    """``ConvergenceMap.bispectrum(l_edges, ratio, configuration)[1]``: lenstools' C loop, in Python.

    The rows and columns visited are restricted to ``|kx1|, ky1 <= l_edges[-1] / lpix + 1`` (every
    other mode fails the C loop's first test, ``l >= l_edges[-1]``), in the C loop's order.
    """
    n = patch.shape[0]
    fourier = np.fft.rfft2(patch)
    size_y = n // 2 + 1
    lpix = 360.0 / patch_size_deg
    nbins = len(l_edges) - 1
    lmax = l_edges[nbins]
    kmax = int(lmax / lpix) + 1
    sums = [0.0] * nbins
    hits = [0] * nbins
    rows = list(range(0, min(kmax, n // 2 - 1) + 1)) + list(range(n - min(kmax, n // 2), n))
    for i in rows:
        kx1 = i if i < n >> 1 else i - n
        for j in range(0, min(kmax, size_y - 1) + 1):
            b1 = fourier[i, j]
            ky1 = j
            ell = math.sqrt(kx1 * kx1 + ky1 * ky1) * lpix
            if ell >= lmax:
                continue
            if configuration == "equilateral":
                if kx1 < 0 and ky1 < kx1 * TAN120:
                    continue
                kx2 = int(COS120 * kx1 - SIN120 * ky1)  # Python int() truncates toward 0, like C
                ky2 = int(SIN120 * kx1 + COS120 * ky1)
            else:
                kx2 = -int(ratio * kx1)
                ky2 = -int(ratio * ky1)
            kx3 = -kx1 - kx2
            ky3 = -ky1 - ky2
            if ky2 < 0:
                kx2, ky2, conjugate = -kx2, -ky2, True
            else:
                conjugate = False
            if ky2 >= size_y or kx2 <= -size_y or kx2 >= size_y:
                continue
            if kx2 < 0:
                kx2 = n + kx2
            b2 = fourier[kx2, ky2]
            if conjugate:
                b2 = b2.conjugate()
            if ky3 < 0:
                kx3, ky3, conjugate = -kx3, -ky3, True
            else:
                conjugate = False
            if ky3 >= size_y or kx3 <= -size_y or kx3 >= size_y:
                continue
            if kx3 < 0:
                kx3 = n + kx3
            b3 = fourier[kx3, ky3]
            if conjugate:
                b3 = b3.conjugate()
            for k in range(nbins):
                if l_edges[k] < ell <= l_edges[k + 1]:
                    hits[k] += 1
                    sums[k] += (b1.real * b2.real * b3.real - b1.real * b2.imag * b3.imag
                                - b1.imag * b2.real * b3.imag - b1.imag * b2.imag * b3.real)
    normalization = (patch_size_deg * np.pi / 180.0) ** 4 / float(n) ** 6
    return np.array([normalization * s / h if h > 0 else 0.0 for s, h in zip(sums, hits)])


# ---------------------------------------------------------------------------------------------
# The full per-patch set

def scale_name(value):
    """``2.0 -> '2'``: the group names of the results layout."""
    return str(int(value)) if float(value).is_integer() else str(value)


def original_patch_statistics(noisy_patches, patch_size_deg, sigmas_px, smoothing_arcmin, l_edges, nu_bins,
                              timers):
    """Every statistic of one patch the original way.

    ``noisy_patches``: {ngal: (N, N) noisy kappa}; ``sigmas_px`` the smoothing sigmas [pixels] of
    ``smoothing_arcmin``. Returns {results-file dataset path: value} (the paths of
    ``lensing_ssc.science.patch_analysis.analyse_patch``) and adds CPU seconds per part to ``timers``.
    """
    ell = 0.5 * (l_edges[1:] + l_edges[:-1])
    out = {}
    for ngal, noisy in noisy_patches.items():
        t0 = time.process_time()
        power = original_power_spectrum(noisy, patch_size_deg, l_edges)
        out[f"power_spectra/ngal_{ngal}/cl"] = power * ell * (ell + 1) / (2 * np.pi)
        t1 = time.process_time()
        for name, (configuration, ratio) in BISPECTRA.items():
            raw = original_bispectrum(noisy, patch_size_deg, l_edges, configuration, ratio)
            out[f"bispectra/ngal_{ngal}/{name}"] = np.abs(raw * ell ** 4 / (2 * np.pi) ** 2)
        t2 = time.process_time()
        timers["power spectrum"] = timers.get("power spectrum", 0.0) + t1 - t0
        timers["bispectra"] = timers.get("bispectra", 0.0) + t2 - t1
        per_scale = original_smoothed_statistics(noisy, sigmas_px, nu_bins, timers)
        for sl, values in zip(smoothing_arcmin, per_scale):
            base = f"smoothed_statistics/ngal_{ngal}/sl_{scale_name(sl)}"
            for group in ("pdf", "peaks", "minima"):
                out[f"{base}/{group}"] = values[group]
            for i in range(3):
                out[f"{base}/minkowski/v{i}"] = values[f"v{i}"]
            out[f"{base}/sigma/0"] = values["sigma0"]
            out[f"{base}/sigma/1"] = values["sigma1"]
    return out


def max_relative_difference(reference, ours):
    """``max |ours - reference| / max |reference|`` of one statistic (arrays or scalars)."""
    reference = np.asarray(reference, dtype=np.float64)
    scale = max(float(np.max(np.abs(reference))), 1e-300)
    return float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - reference)) / scale)
