"""Preprocessing benchmark: the pipeline against the original method, on the same synthetic usmesh.

    python benchmarks/bench_preprocess.py [--nside 1024] [--rows 2e7] [--sheets 40] [--repeat 2]

Writes a FastPM-layout usmesh (HEALPIX block: ID = slice * npix + NEST pixel, sorted by slice then
pixel as FastPM writes each event, float32 Mass and Aemit, aemitIndex attrs) with ``--rows`` rows in
``--sheets`` slices, then times, each in its own process so that peak RSS is its own:

* the original method (SCIENCE.md §2.3): per sheet, read the whole row range at once, one
  ``np.bincount(ID % npix, weights=Mass, minlength=npix)``, overdensity, ``hp.write_map`` float32;
* ``lensing-ssc preprocess`` on 1 rank and on 2 ranks.

Prints rows/s, peak RSS (max over ranks), the RSS right after the imports (max over ranks) and the
rise of the peak above it (max over ranks), and the ratios: targets throughput >= 0.9x the original
at <= 1/5 of its peak memory, and 2 ranks >= 1.7x one rank. The ratio of the rises shows what the
method itself holds, without the ~100-200 MB of interpreter and libraries that both pay.
"""
import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ORIGINAL = r'''
import json, resource, sys, time
import bigfile, healpy as hp, numpy as np
from astropy.cosmology import FlatLambdaCDM
imports_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
path, out = sys.argv[1], sys.argv[2]
began = time.perf_counter()
block = bigfile.File(path)["HEALPIX"]
header = bigfile.File(path)["Header"].attrs
attrs = bigfile.File(path + "/HEALPIX")["."].attrs
npix = int(attrs["healpix.npix"][0]); offset = attrs["aemitIndex.offset"]; edges = attrs["aemitIndex.edges"]
cosmo = FlatLambdaCDM(H0=67.74, Om0=0.309)
rhobar = header["MassTable"][1] * (header["NC"][0] / header["BoxSize"][0]) ** 3
rows = 0
for i in range(len(edges) - 1):
    start, end = int(offset[i + 1]), int(offset[i + 2])
    if start == end:
        continue
    ids = bigfile.File(path)["HEALPIX/ID"][start:end]
    mass = bigfile.File(path)["HEALPIX/Mass"][start:end]
    sheet = np.bincount(ids % npix, weights=mass, minlength=npix)
    chi1, chi2 = (cosmo.comoving_distance(1 / a - 1).value * 0.6774 for a in (edges[i], edges[i + 1]))
    delta = sheet / (4 * np.pi * (chi1 ** 3 - chi2 ** 3) / (3 * npix) * rhobar) - 1
    hp.write_map(f"{out}/delta-sheet-{i:02d}.fits", delta, nest=True, dtype=np.float32, overwrite=True)
    rows += end - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - began, "peak_mb": peak_mb,
                  "imports_mb": imports_mb, "rise_mb": peak_mb - imports_mb}))
'''

PIPELINE = r'''
import json, resource, sys, time
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.parallel import get_comm
from lensing_ssc.processing.pipeline import PreprocessingPipeline
config = ProcessingConfig(data_dir=sys.argv[1], output_dir=sys.argv[2], seed=1, memory_monitoring=False,
                          preprocessing={"sheet_range": [0, 100], "chunk_size": 4_000_000})
comm = get_comm()
imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
comm.barrier()
began = time.perf_counter()
PreprocessingPipeline(config).execute()
seconds = comm.max(time.perf_counter() - began)
mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
peak, imports_mb, rise = comm.max(mine), comm.max(imports), comm.max(mine - imports)
if comm.is_root:
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "imports_mb": imports_mb, "rise_mb": rise}))
'''


def write_usmesh(path: Path, nside: int, rows: int, sheets: int, seed: int = 0) -> int:
    """A FastPM-layout usmesh with ``rows`` HEALPIX rows spread over slices 60-60+sheets."""
    import bigfile
    rng = np.random.default_rng(seed)
    npix, nslices = 12 * nside ** 2, 100
    per_sheet = rows // sheets
    first = 60 - sheets // 2
    counts = np.zeros(nslices + 1, dtype=np.int64)
    with bigfile.File(str(path), create=True) as handle:
        header = handle.create("Header", dtype=np.dtype(("i8", (0,))), size=0, Nfile=1)
        for key, value in {"BoxSize": [500.0], "NC": [256], "MassTable": [0.0, 50.0, 0, 0, 0, 0],
                           "OmegaM": [0.309], "HubbleParam": [0.6774]}.items():
            header.attrs[key] = np.asarray(value)
        ids, masses, aemit = [], [], []  # rows of HEALPIX in FastPM order: by slice, then pixel
        for i in range(first, first + sheets):
            pixels = np.sort(rng.choice(npix, size=min(per_sheet, npix), replace=False))
            ids.append(i * npix + pixels)
            masses.append(rng.poisson(3.0, pixels.size).astype(np.float32) * 50 + 50)
            aemit.append(np.full(pixels.size, (i + 0.5) / nslices, dtype=np.float32))
            counts[i] = pixels.size
        columns = {"ID": np.concatenate(ids), "Mass": np.concatenate(masses), "Aemit": np.concatenate(aemit)}
        for name, values in columns.items():
            handle.create_from_array(f"HEALPIX/{name}", values, Nfile=4)
        block = handle.create("HEALPIX", dtype=np.dtype(("i8", (0,))), size=0, Nfile=0)
        offset = np.concatenate([[0], np.cumsum(np.concatenate([[0], counts]))])
        for key, value in {"healpix.npix": [npix], "healpix.nside": [nside], "healpix.nslices": [nslices],
                           "healpix.scheme": "RING", "aemitIndex.edges": np.linspace(0, 1, nslices + 1),
                           "aemitIndex.offset": offset, "aemitIndex.size": np.concatenate([[0], counts]),
                           "M0": [0.0]}.items():
            block.attrs[key] = value if isinstance(value, str) else np.asarray(value)
    return int(columns["ID"].size)


def run_json(command, env=None):
    # Dirty pages left by the previous step (the usmesh just written, the sheets of the previous method,
    # which the original method writes without fsync) are flushed first: otherwise the next method's own
    # fsyncs queue behind that writeback and it is charged for the previous one's writes.
    os.sync()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"benchmark step failed: {' '.join(map(str, command))}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, default=1024)
    parser.add_argument("--rows", type=float, default=2e7)
    parser.add_argument("--sheets", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each method, interleaved; the fastest kept")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        began = time.perf_counter()
        # Written in a spawned process: Linux keeps a process's peak RSS across fork + exec, so a big
        # parent would inflate every child's ru_maxrss.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = pool.submit(write_usmesh, tmp / "usmesh", args.nside, int(args.rows), args.sheets).result()
        print(f"synthetic usmesh: {rows:.3g} rows, nside {args.nside}, {args.sheets} sheets "
              f"(written in {time.perf_counter() - began:.1f} s)")
        commands = {"original": [sys.executable, "-c", ORIGINAL],
                    "1 rank": [sys.executable, "-c", PIPELINE],
                    "2 ranks": ["mpiexec", "-n", "2", sys.executable, "-c", PIPELINE]}
        runs = {name: [] for name in commands}
        for repetition in range(args.repeat):  # methods interleaved, so disk and load changes hit all
            for name, command in commands.items():
                out = tmp / f"{name.replace(' ', '_')}_{repetition}"
                out.mkdir()
                runs[name].append(run_json(command + [tmp / "usmesh", out], env))
                shutil.rmtree(out)
        # the fastest run of each method, and its peak memory (the same in every run)
        original, one, two = (min(runs[name], key=lambda run: run["seconds"]) for name in commands)
        for name in commands:
            print(f"{name}: " + ", ".join(f"{run['seconds']:.2f} s" for run in runs[name]))
    rate = {name: rows / result["seconds"] for name, result in
            (("original", original), ("1 rank", one), ("2 ranks", two))}
    print(f"{'method':<10} {'seconds':>8} {'Mrows/s':>8} {'peak MB':>8} {'imports MB':>10} {'rise MB':>8}")
    for name, result in (("original", original), ("1 rank", one), ("2 ranks", two)):
        print(f"{name:<10} {result['seconds']:>8.2f} {rate[name] / 1e6:>8.2f} {result['peak_mb']:>8.0f} "
              f"{result['imports_mb']:>10.0f} {result['rise_mb']:>8.0f}")
    print(f"throughput 1 rank / original: {rate['1 rank'] / rate['original']:.2f} (target >= 0.9)")
    print(f"peak memory 1 rank / original: {one['peak_mb'] / original['peak_mb']:.2f} (target <= 0.2); "
          f"rise above the imports: {one['rise_mb'] / original['rise_mb']:.2f}")
    print(f"speed-up 2 ranks / 1 rank: {rate['2 ranks'] / rate['1 rank']:.2f} (target >= 1.7)")


if __name__ == "__main__":
    main()
