"""Time the full statistic set of one 10-degree patch: the original method against ``analyse_patch``.

One (xsize, xsize) patch of 10 deg (default 2048^2) holding a Gaussian random convergence field with
ell(ell+1)C/2pi = 1e-4 (ell/1000)^0.5, made by FFT on the flat patch. The full production set:
5 noise levels (ngal 0, 7, 15, 30, 50) x 4 smoothing scales (2, 5, 8, 10 arcmin); per noise level the
power spectrum and 3 bispectra of the unsmoothed noisy patch, per (noise, scale) the PDF, peaks,
minima, Minkowski functionals and sigma0/sigma1 (SCIENCE.md §5-6).

* original: ``original_method.original_patch_statistics`` (the original method written out
  literally: gaussian_filter per scale, one pass per statistic, rfft2 per spectrum call, the
  lenstools bispectrum loop mode by mode in Python);
* ours: ``lensing_ssc.science.patch_analysis.analyse_patch`` with the production settings.

Both get the same noise: one field per noise level, drawn with ``lensing_ssc.science.noise`` from the
same keyed generator (the original drew a new field for the spectra and for each scale; those 4 extra
draws per noise level are not timed here). The script prints wall and CPU time per patch for each
method and their ratio, the original's time per part (CPU) and ours (cProfile of one more call),
and the largest difference of every statistic group between the two, relative to the largest
reference value of the dataset. It exits with an error if a difference exceeds 1e-5.

Usage: python benchmarks/bench_analysis_patch.py [--xsize 2048] [--repeat 1]
"""
import argparse
import cProfile
import os
import pstats
import time

import numpy as np

from lensing_ssc.science.noise import noise_generator, noise_sigma_per_pixel, shape_noise
from lensing_ssc.science.patch_analysis import PatchAnalysisSettings, analyse_patch
from lensing_ssc.science.smoothing import sigma_pixels
from original_method import max_relative_difference, original_patch_statistics

NOISE_SEED, ZS, PATCH_INDEX = 20261126, 1.0, 0
TOLERANCE = 1e-5
TARGET_SPEEDUP = 5.0
# Our parts, as (file suffix, function name) entries of the cProfile statistics (cumulative time).
OUR_PARTS = {
    "noise": [("noise.py", "shape_noise")],
    "FFT (once per noise level)": [("power_spectrum.py", "patch_rfft2")],
    "power spectrum binning": [("power_spectrum.py", "power_spectrum_from_fft")],
    "bispectra": [("bispectrum.py", "bispectrum_from_fft")],
    "smoothing (DCT)": [("smoothing.py", "__init__"), ("smoothing.py", "smooth")],
    "PDF + MFs + sigma1 sweep": [("minkowski.py", "minkowski_sweep")],
    "peaks + minima sweep": [("peaks.py", "extrema_heights")],
}


def gaussian_random_patch(xsize, patch_size_deg, rng):
    """(xsize, xsize) Gaussian convergence field with ell(ell+1)C/2pi = 1e-4 (ell/1000)^0.5 [flat sky].

    White noise w has <|rfft2(w)|^2> = N^2; scaling each mode by sqrt(C(l) / A_pix) gives
    <|F|^2> = N^2 C(l) / A_pix, the normalisation of the lenstools estimator
    P = (theta_rad / N^2)^2 <|F|^2> = C(l).
    """
    theta_rad = np.radians(patch_size_deg)
    pixel_area_sr = (theta_rad / xsize) ** 2
    lpix = 2 * np.pi / theta_rad
    i = np.arange(xsize)
    lx = np.minimum(i, xsize - i) * lpix
    ly = np.arange(xsize // 2 + 1) * lpix
    ell = np.hypot(lx[:, None], ly[None, :])
    cl = np.zeros_like(ell)
    positive = ell > 0
    cl[positive] = 2 * np.pi * 1e-4 * (ell[positive] / 1000.0) ** 0.5 / (ell[positive] * (ell[positive] + 1))
    modes = np.fft.rfft2(rng.standard_normal((xsize, xsize))) * np.sqrt(cl / pixel_area_sr)
    return np.fft.irfft2(modes, s=(xsize, xsize))


def noise_rng(ngal):
    return noise_generator(NOISE_SEED, ZS, PATCH_INDEX, ngal, "shape_noise")


def noisy_patches(kappa, settings):
    """{ngal: kappa + noise}: the very fields ``analyse_patch`` draws through ``noise_rng``."""
    out = {}
    for ngal in settings.ngal_list:
        sigma = noise_sigma_per_pixel(ngal, settings.epsilon, settings.pixarea_arcmin2)
        out[ngal] = kappa + shape_noise(kappa.shape, sigma, noise_rng(ngal)) if sigma > 0 else kappa
    return out


def run_original(kappa, settings):
    """(statistics, wall s, CPU s, CPU s per part) of the original method, noise draws included."""
    sigmas = [sigma_pixels(sl, settings.patch_size_deg, settings.xsize) for sl in settings.smoothing_arcmin]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    patches = noisy_patches(kappa, settings)
    parts = {"noise": time.process_time() - cpu0}
    statistics = original_patch_statistics(patches, settings.patch_size_deg, sigmas, settings.smoothing_arcmin,
                                           settings.l_edges, settings.nu_edges, parts)
    return statistics, time.perf_counter() - wall0, time.process_time() - cpu0, parts


def run_ours(kappa, settings):
    """(statistics, wall s, CPU s) of analyse_patch."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    statistics = analyse_patch(kappa, settings, noise_rng)
    return statistics, time.perf_counter() - wall0, time.process_time() - cpu0


def profile_ours(kappa, settings):
    """Seconds per part of one analyse_patch call (cProfile cumulative times) and the total."""
    profiler = cProfile.Profile()
    profiler.runcall(analyse_patch, kappa, settings, noise_rng)
    stats = pstats.Stats(profiler).stats
    total = max(entry[3] for (_, _, name), entry in stats.items() if name == "analyse_patch")
    parts = {}
    for part, functions in OUR_PARTS.items():
        parts[part] = sum(entry[3] for (path, _, name), entry in stats.items()
                          if any(path.endswith(suffix) and name == wanted for suffix, wanted in functions))
    parts["rest (std, normalisation, checks)"] = total - sum(parts.values())
    return parts, total


def statistic_group(path):
    """``power_spectra/ngal_7/cl -> power_spectra/cl``, ``smoothed_statistics/ngal_7/sl_2/pdf -> pdf``."""
    pieces = path.split("/")
    if pieces[0] == "smoothed_statistics":
        return "/".join(pieces[3:])
    return "/".join([pieces[0]] + pieces[2:])


def differences(reference, ours):
    """Largest scale-relative difference per statistic group (max over noise levels and scales)."""
    if sorted(reference) != sorted(ours):
        raise SystemExit(f"MISMATCH: datasets differ: only original {sorted(set(reference) - set(ours))}, "
                         f"only ours {sorted(set(ours) - set(reference))}")
    worst = {}
    for path, value in reference.items():
        group = statistic_group(path)
        worst[group] = max(worst.get(group, 0.0), max_relative_difference(value, ours[path]))
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xsize", type=int, default=2048, help="patch side in pixels, even (default 2048)")
    parser.add_argument("--repeat", type=int, default=1, help="timing repetitions, best kept (default 1)")
    args = parser.parse_args()
    settings = PatchAnalysisSettings(xsize=args.xsize)
    kappa = gaussian_random_patch(args.xsize, settings.patch_size_deg, np.random.default_rng(1))
    print(f"patch {args.xsize}^2 of {settings.patch_size_deg:g} deg, kappa rms {kappa.std():.4g}; "
          f"ngal {list(settings.ngal_list)}, sl {list(settings.smoothing_arcmin)} arcmin; "
          f"load average at start {os.getloadavg()[0]:.2f}")

    original = {"wall": np.inf, "cpu": np.inf}
    ours = {"wall": np.inf, "cpu": np.inf}
    original_parts = {}
    for _ in range(args.repeat):
        reference, wall, cpu, parts = run_original(kappa, settings)
        if cpu < original["cpu"]:
            original_parts = parts
        original = {"wall": min(original["wall"], wall), "cpu": min(original["cpu"], cpu)}
        result, wall, cpu = run_ours(kappa, settings)
        ours = {"wall": min(ours["wall"], wall), "cpu": min(ours["cpu"], cpu)}
    our_parts, profiled_total = profile_ours(kappa, settings)

    print(f"\noriginal method: {original['wall']:.2f} s wall, {original['cpu']:.2f} s CPU per patch "
          f"(best of {args.repeat})")
    for part, seconds in original_parts.items():
        print(f"    {part:<34} {seconds:7.3f} s")
    print(f"ours (analyse_patch): {ours['wall']:.2f} s wall, {ours['cpu']:.2f} s CPU per patch")
    print(f"  by part (cProfile of one more call, {profiled_total:.2f} s):")
    for part, seconds in our_parts.items():
        print(f"    {part:<34} {seconds:7.3f} s")
    speedup_wall = original["wall"] / ours["wall"]
    speedup_cpu = original["cpu"] / ours["cpu"]
    verdict = "met" if min(speedup_wall, speedup_cpu) >= TARGET_SPEEDUP else "NOT met"
    print(f"\nspeed-up: {speedup_wall:.1f}x wall, {speedup_cpu:.1f}x CPU (target >= {TARGET_SPEEDUP:g}x: {verdict})")

    worst = differences(reference, result)
    print("max |ours - original| / max|original| per statistic group (over all noise levels and scales):")
    for group, value in worst.items():
        print(f"    {group:<24} {value:.1e}")
    largest = max(worst.values())
    print(f"largest difference {largest:.1e} (target <= {TOLERANCE:g}: {'met' if largest <= TOLERANCE else 'NOT met'})")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if largest > TOLERANCE:
        raise SystemExit("MISMATCH: the statistics differ beyond the tolerance")


if __name__ == "__main__":
    main()
