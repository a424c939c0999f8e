"""Compressed vs uncompressed intermediate files: size and write/read time, to choose the default of
``pipeline.compress_checkpoints``.

Two intermediates, each written and read ``--repeat`` times (best kept), uncompressed (``np.savez``)
and compressed (``np.savez_compressed``, zlib level 6):

* a kappa-stage task checkpoint: float32 partial sums of 5 sources over 2^20 NESTED pixels (one task
  of ``kappa_steps.MAX_PIXELS_PER_TASK``), written and read through the production path
  ``CheckpointStore.save_task`` / ``load_task`` (atomic write with fsync + sha256 of the file). The
  field is a realistic convergence: 5 cumulative sums of Gaussian shells with a red spectrum
  (healpy ``synfast`` at nside ``--nside``, ell(ell+1)C/2pi ~ 1e-4 (ell/1000)^0.5), cut to one
  NESTED sub-tree of 2^20 pixels, so neighbouring values are correlated as in the real maps;
* a geometry-cache entry (``GeometryCache``): the int32 (M, M) RING indices of one patch
  (``--xsize``, nside ``--nside``), read back through the cache (hit) - a cold call also computes
  the indices, so its write time is taken as the same ``np.savez`` + fsync the cache does.

Printed per intermediate: bytes, compression ratio, write and read seconds and the ratio of the
times; then the recommendation that follows from the numbers.

Usage: python benchmarks/bench_compression.py [--nside 1024] [--xsize 1024] [--repeat 3] [--workdir DIR]
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import healpy as hp
import numpy as np

from lensing_ssc.io.geometry_cache import GeometryCache
from lensing_ssc.processing.checkpoint import CheckpointStore
from lensing_ssc.processing.steps.kappa_steps import MAX_PIXELS_PER_TASK
from lensing_ssc.science.patches import patch_pixel_indices

N_SOURCES = 5


def kappa_partial_sums(nside: int, seed: int = 0) -> np.ndarray:
    """float32 (5, 2^20): cumulative sums of 5 Gaussian shells on NESTED pixels [0, 2^20)."""
    ell = np.arange(3 * nside, dtype=float)
    cl = np.zeros_like(ell)
    cl[2:] = 2 * np.pi * 1e-4 * (ell[2:] / 1000.0) ** 0.5 / (ell[2:] * (ell[2:] + 1)) / N_SOURCES
    np.random.seed(seed)
    pixels = min(MAX_PIXELS_PER_TASK, 12 * nside ** 2)
    shells = [hp.reorder(hp.synfast(cl, nside), r2n=True)[:pixels] for _ in range(N_SOURCES)]
    return np.cumsum(shells, axis=0).astype(np.float32)


def best_of(repeat, function):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name, sizes, writes, reads, raw_bytes):
    print(f"\n{name} ({raw_bytes / 2**20:.1f} MiB of array data)")
    print(f"{'':14}{'MiB':>8}{'write s':>10}{'read s':>9}")
    for label in ("uncompressed", "compressed"):
        print(f"{label:14}{sizes[label] / 2**20:>8.2f}{writes[label]:>10.3f}{reads[label]:>9.3f}")
    print(f"compressed/uncompressed: size {sizes['compressed'] / sizes['uncompressed']:.2f}, "
          f"write time {writes['compressed'] / writes['uncompressed']:.1f}x, "
          f"read time {reads['compressed'] / reads['uncompressed']:.1f}x")


def bench_kappa_checkpoint(workdir: Path, nside: int, repeat: int):
    arrays = {"kappa": kappa_partial_sums(nside)}
    sizes, writes, reads = {}, {}, {}
    for compress in (False, True):
        label = "compressed" if compress else "uncompressed"
        store = CheckpointStore(workdir / label, "kappa", rank=0, compress=compress)
        writes[label] = best_of(repeat, lambda: store.save_task(7, arrays, interval=10**9))
        reads[label] = best_of(repeat, lambda: store.load_task(7))
        sizes[label] = (store.tasks_dir / "00000007.npz").stat().st_size
        if not np.array_equal(store.load_task(7)["kappa"], arrays["kappa"]):
            raise AssertionError(f"{label} checkpoint does not read back the same array")
    report(f"kappa task checkpoint: float32 {arrays['kappa'].shape}, nside-{nside} Gaussian shells",
           sizes, writes, reads, arrays["kappa"].nbytes)
    return sizes, writes, reads


def bench_geometry_entry(workdir: Path, nside: int, xsize: int, repeat: int):
    theta, phi, side = 1.1, 2.3, 10.0
    indices = patch_pixel_indices(nside, theta, phi, side, xsize).astype(np.int32)
    sizes, writes, reads = {}, {}, {}
    for compress in (False, True):
        label = "compressed" if compress else "uncompressed"
        directory = workdir / f"geometry-{label}"
        GeometryCache(directory, compress=compress).patch_pixel_indices(nside, theta, phi, side, xsize)
        entry = next(directory.glob("*.npz"))
        sizes[label] = entry.stat().st_size
        reads[label] = best_of(repeat, lambda: GeometryCache(directory, compress=compress).patch_pixel_indices(
            nside, theta, phi, side, xsize))

        def write(target=workdir / f"probe-{label}.npz"):
            with open(target, "wb") as handle:
                (np.savez_compressed if compress else np.savez)(handle, indices=indices)
                handle.flush()
                os.fsync(handle.fileno())
        writes[label] = best_of(repeat, write)
    report(f"geometry-cache entry: int32 {indices.shape} RING indices, nside {nside}, xsize {xsize}",
           sizes, writes, reads, indices.nbytes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nside", type=int, default=1024)
    parser.add_argument("--xsize", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_compression_", dir=args.workdir))
    try:
        sizes, writes, reads = bench_kappa_checkpoint(workdir, args.nside, args.repeat)
        bench_geometry_entry(workdir, args.nside, args.xsize, args.repeat)
        saved = 1.0 - sizes["compressed"] / sizes["uncompressed"]
        extra = writes["compressed"] - writes["uncompressed"] + reads["compressed"] - reads["uncompressed"]
        print(f"\nkappa checkpoints: compression saves {saved:.0%} of the bytes for {extra:.3f} s more per task "
              "(write + read)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
