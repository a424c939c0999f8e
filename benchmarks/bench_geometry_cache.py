"""Patch extraction with the geometry cache (lensing_ssc.io.geometry_cache.GeometryCache): first map vs later maps.

Patch extraction is what ``StatisticsStep`` does per patch before the statistics: the RING pixel
indices of the gnomonic image (``patch_pixel_indices``) and the sampled, 45-degree-rotated, cropped
patch (``project_patch``). For ``--npatch`` patches of ``--side`` degrees (Fibonacci centres, spread over
the sky) of a full-sky nside ``--nside`` map, at ``--xsize`` pixels:

* ``uncached``: compute the indices + project (today's code: every map of every simulation);
* ``cold``: first map with an empty cache: compute, store the entry, project;
* ``warm``: every later map: load the entry, project.

Each for an uncompressed and a compressed cache. Printed: seconds per patch (the best of
``--repeat`` passes, each over all patches), the warm-cache speed-up over the uncached path (target
>= 3x), the cold-cache overhead, the size of one entry, and the split of the warm time into load and
projection. The warm patches are checked to be bit-identical to the uncached ones.

Usage: python benchmarks/bench_geometry_cache.py [--nside 1024] [--xsize 1024] [--npatch 30] [--side 10]
       [--repeat 2] [--workdir DIR]
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

import healpy as hp
import numpy as np

from lensing_ssc.io.geometry_cache import GeometryCache
from lensing_ssc.science.fibonacci import patch_centers
from lensing_ssc.science.patches import gnomonic_image_size, patch_pixel_indices, project_patch

TARGET_SPEEDUP = 3.0


def extract_all(ring, centres, side, xsize, indices_of):
    """Project every patch; ``indices_of(theta, phi)`` gives its pixel indices. Returns (seconds, patches)."""
    start = time.perf_counter()
    patches = [project_patch(ring, indices_of(theta, phi), xsize) for theta, phi in centres]
    return time.perf_counter() - start, patches


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nside", type=int, default=1024)
    parser.add_argument("--xsize", type=int, default=1024)
    parser.add_argument("--npatch", type=int, default=30)
    parser.add_argument("--side", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where to put the cache (default: a temporary directory)")
    args = parser.parse_args()
    nside, xsize, side = args.nside, args.xsize, args.side
    theta, phi = patch_centers(side)
    pick = np.linspace(0, theta.size - 1, min(args.npatch, theta.size)).round().astype(int)
    centres = list(zip(theta[pick], phi[pick]))
    ring = np.random.default_rng(0).standard_normal(hp.nside2npix(nside))
    image = gnomonic_image_size(xsize)
    print(f"{len(centres)} patches of {side} deg, xsize {xsize} (gnomonic image {image}^2), map nside {nside}")

    workdir = Path(tempfile.mkdtemp(prefix="bench_geometry_cache_", dir=args.workdir))
    try:
        best = {}
        reference = None
        for _ in range(args.repeat):
            seconds, patches = extract_all(ring, centres, side, xsize,
                                           lambda t, p: patch_pixel_indices(nside, t, p, side, xsize))
            best["uncached"] = min(best.get("uncached", np.inf), seconds)
            reference = patches
        for compress in (False, True):
            label = "compressed" if compress else "uncompressed"
            directory = workdir / label
            for _ in range(args.repeat):
                shutil.rmtree(directory, ignore_errors=True)
                cold = GeometryCache(directory, compress=compress)
                seconds, _ = extract_all(ring, centres, side, xsize,
                                         lambda t, p: cold.patch_pixel_indices(nside, t, p, side, xsize))
                best[f"cold {label}"] = min(best.get(f"cold {label}", np.inf), seconds)
                warm = GeometryCache(directory, compress=compress)
                seconds, patches = extract_all(ring, centres, side, xsize,
                                               lambda t, p: warm.patch_pixel_indices(nside, t, p, side, xsize))
                best[f"warm {label}"] = min(best.get(f"warm {label}", np.inf), seconds)
                if warm.hits != len(centres) or not all(np.array_equal(a, b) for a, b in zip(patches, reference)):
                    raise AssertionError(f"warm {label} cache: patches differ from the uncached ones")
                start = time.perf_counter()
                for t, p in centres:
                    warm.patch_pixel_indices(nside, t, p, side, xsize)
                best[f"load {label}"] = min(best.get(f"load {label}", np.inf), time.perf_counter() - start)
            sizes = [path.stat().st_size for path in directory.glob("*.npz")]
            best[f"entry MB {label}"] = np.mean(sizes) / 2**20

        n = len(centres)
        print(f"{'path':<24}{'s/patch':>9}")
        for name in ("uncached", "cold uncompressed", "warm uncompressed", "cold compressed", "warm compressed"):
            print(f"{name:<24}{best[name] / n:>9.3f}")
        for label in ("uncompressed", "compressed"):
            speedup = best["uncached"] / best[f"warm {label}"]
            print(f"{label}: warm speed-up {speedup:.2f}x over uncached (target >= {TARGET_SPEEDUP:.0f}x: "
                  f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}); cold overhead "
                  f"{best[f'cold {label}'] / best['uncached']:.2f}x; entry {best[f'entry MB {label}']:.1f} MB "
                  f"(x{len(theta)} patches of a full {side}-deg set: "
                  f"{best[f'entry MB {label}'] * len(theta) / 1024:.2f} GB); warm = load "
                  f"{best[f'load {label}'] / n * 1e3:.1f} ms + projection "
                  f"{(best[f'warm {label}'] - best[f'load {label}']) / n * 1e3:.0f} ms per patch")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
