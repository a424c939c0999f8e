"""Time the smoothed-map statistics of one 2048^2 patch: the original method against ours.

The original method (SCIENCE.md §5.2, §6.4, written out literally): per smoothing scale
``scipy.ndimage.gaussian_filter``, ``np.histogram(density=True)``, 8-neighbour peaks and minima
(periodic neighbours, float32 centre as in lenstools' C code, height range, border cut) and the
``np.gradient`` Minkowski functionals with one boolean mask per bin. Ours is
``lensing_ssc.science.statistics.smoothed.smoothed_statistics``. Both run on the same Gaussian
random patch at the four production scales (2, 5, 8, 10 arcmin = 6.827, 17.07, 27.31, 34.13 px),
i.e. one noise level of the per-patch analysis; the script checks that the numbers agree and prints
the CPU times of this (single-threaded) process, which are steadier than wall-clock times on a
shared machine. Compare figures from one run only.

Usage: python benchmarks/bench_smoothed_statistics.py [--size 2048] [--repeat 1]
"""
import argparse
import time

import numpy as np
from scipy.ndimage import gaussian_filter

from lensing_ssc.science.smoothing import sigma_pixels
from lensing_ssc.science.statistics.smoothed import smoothed_statistics

BINS = np.linspace(-4.0, 4.0, 9)
SMOOTHING_ARCMIN = (2.0, 5.0, 8.0, 10.0)


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


def original_method(patch, sigmas, bins, timers):
    """Per-scale statistics the original way; adds seconds per part to ``timers``."""
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


def compare(reference, ours):
    """Largest deviation per statistic, relative to the largest reference value of that statistic."""
    worst = {}
    for ref, new in zip(reference, ours):
        for key, value in ref.items():
            scale = max(np.max(np.abs(value)), 1e-300)
            worst[key] = max(worst.get(key, 0.0), float(np.max(np.abs(np.asarray(value) - new[key])) / scale))
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="patch side in pixels (default 2048)")
    parser.add_argument("--repeat", type=int, default=1, help="timing repetitions, best kept (default 1)")
    args = parser.parse_args()
    patch = np.random.default_rng(20261126).standard_normal((args.size, args.size))
    # The production scales are defined for 10 deg / 2048 px; keep them in pixels for any size.
    sigmas = [sigma_pixels(sl, 10.0, 2048) for sl in SMOOTHING_ARCMIN]

    original_best, ours_best, parts = np.inf, np.inf, {}
    for _ in range(args.repeat):
        timers = {}
        t0 = time.process_time()
        reference = original_method(patch, sigmas, BINS, timers)
        original_seconds = time.process_time() - t0
        if original_seconds < original_best:
            original_best, parts = original_seconds, timers
        t0 = time.process_time()
        ours = smoothed_statistics(patch, sigmas, BINS)
        ours_best = min(ours_best, time.process_time() - t0)

    worst = compare(reference, ours)
    print(f"patch {args.size}^2, sigma_px = {', '.join(f'{s:.3f}' for s in sigmas)}")
    print("original method, seconds for the 4 scales: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    print(f"original method: {original_best:.3f} s   ours: {ours_best:.3f} s   "
          f"speed-up: {original_best / ours_best:.1f}x")
    print("max |ours - original| / max|original| per statistic: "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    exact = all(np.array_equal(r[k], o[k])
                for r, o in zip(reference, ours) for k in ("pdf", "peaks", "minima", "v0"))
    print(f"pdf, peaks, minima, v0 identical: {exact}")
    if max(worst.values()) > 1e-9:
        raise SystemExit("MISMATCH: the statistics differ beyond float rounding")


if __name__ == "__main__":
    main()
