"""Time the smoothed-map statistics of one 2048^2 patch: the original method against ours.

The original method (SCIENCE.md §5.2, §6.4, written out literally in ``original_method.py``): per
smoothing scale ``scipy.ndimage.gaussian_filter``, ``np.histogram(density=True)``, 8-neighbour peaks
and minima (periodic neighbours, float32 centre as in lenstools' C code, height range, border cut)
and the ``np.gradient`` Minkowski functionals with one boolean mask per bin. Ours is
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

from lensing_ssc.science.smoothing import sigma_pixels
from lensing_ssc.science.statistics.smoothed import smoothed_statistics
from original_method import max_relative_difference, original_smoothed_statistics

BINS = np.linspace(-4.0, 4.0, 9)
SMOOTHING_ARCMIN = (2.0, 5.0, 8.0, 10.0)


def compare(reference, ours):
    """Largest deviation per statistic, relative to the largest reference value of that statistic."""
    worst = {}
    for ref, new in zip(reference, ours):
        for key, value in ref.items():
            worst[key] = max(worst.get(key, 0.0), max_relative_difference(value, new[key]))
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
        reference = original_smoothed_statistics(patch, sigmas, BINS, timers)
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
