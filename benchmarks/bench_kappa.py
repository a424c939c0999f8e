"""Time the kappa stage (Born sums over delta sheets) against just reading the sheets once.

Synthetic inputs: ``--nsheets`` lognormal-like overdensity sheets (float32, NESTED, nside ``--nside``)
written with ``lensing_ssc.io.healpix_maps.write_nested_map`` with the headers the stage reads (SHEET,
A_FAR, A_NEAR, SEED); the scale-factor edges split [0.28, 1] evenly, so every sheet lies in front of
some of the 5 sources (zs = 0.5, 1, 1.5, 2, 2.5) and is read.

* baseline (a): every sheet read once, whole, into float64 with the reader the stage uses
  (``MapRangeReader``: header parsed once, pixels by ``pread``); for comparison also (a0)
  ``healpy.read_map`` of every sheet (float64) and (a') the stage's reader on pieces of
  ``BORN_READ_PIXELS`` pixels (the ranges the stage reads) into one reused buffer (no whole map in
  memory: from nside ~1024 up much faster than (a), whose fresh 8 B/pixel arrays cost page faults).
  Each baseline runs as the pipeline does: in a fresh python process, one pass timed after the imports,
  once per repetition between the pipeline runs, the best kept. The ratios are printed against (a) and
  against the faster of (a) and (a');
* (b) ``KappaPipeline`` on 1 and on 2 ranks (children: plain python / ``mpiexec -n 2``), each run in
  a fresh output directory, the sheets shared through a symlink; ``--repeat`` runs per rank count,
  interleaved, the best kept.

Printed per rank count: the wall time of the child command, the pipeline's own time (``execute()``,
slowest rank, i.e. without interpreter start-up and imports) and its step timings, the ratios of
both to the baseline (target <= 1.3x), and each rank's peak RSS (``PipelineResult.peak_memory_mb``,
psutil-sampled, and the kernel's high-water mark VmHWM of the whole process, imports included; not
``getrusage`` ru_maxrss, which a child inherits from the parent's RSS at the fork and keeps across
``exec``: it reported this benchmark's whole-map reads as the child's peak). The maps written on 1 and on
2 ranks are checked to be byte-identical.

With ``--cold`` the sheets are evicted from the page cache (``posix_fadvise`` DONTNEED) before every
read and every pipeline run: both then read from the disk, as on a cluster.

Usage: python benchmarks/bench_kappa.py [--nside 512] [--nsheets 60] [--repeat 2] [--ranks 1,2] [--cold]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import run_python  # noqa: E402  (launches python on 1..n ranks in a clean MPI environment)

import healpy as hp  # noqa: E402

from lensing_ssc.io.healpix_maps import MapRangeReader, read_header_and_layout, write_nested_map  # noqa: E402
from lensing_ssc.processing.steps.kappa_steps import BORN_READ_PIXELS, MAX_PIXELS_PER_TASK  # noqa: E402

SOURCES = (0.5, 1.0, 1.5, 2.0, 2.5)
TARGET_RATIO = 1.3
# One JSON line per job: every rank's start-up time, execute() time, process CPU time, step timings
# and peak memory.
DRIVER = """
import json, resource, sys, time
began = time.perf_counter()
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.parallel import get_comm, root_then_bcast
from lensing_ssc.processing.pipeline import KappaPipeline
comm = get_comm()
config = root_then_bcast(comm, lambda: ProcessingConfig.from_yaml(sys.argv[1]))
comm.barrier()
ready = time.perf_counter()
result = KappaPipeline(config).execute()
finished = time.perf_counter()
usage = resource.getrusage(resource.RUSAGE_SELF)
with open("/proc/self/status") as status:
    high_water_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024.0
row = {"rank": comm.rank, "startup_s": ready - began, "execute_s": finished - ready,
       "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": finished - began,
       "steps": result.step_timings, "peak_memory_mb": result.peak_memory_mb,
       "high_water_mb": high_water_mb}
rows = comm.gather(row)
if comm.is_root:
    print("BENCH " + json.dumps(rows), flush=True)
"""


def write_sheets(directory, nside, nsheets, seed=11):
    """``nsheets`` float32 overdensity sheets >= -1 with A_FAR/A_NEAR evenly splitting [0.28, 1]."""
    edges = np.linspace(0.28, 1.0, nsheets + 1)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(nsheets):
        delta = (np.exp(rng.normal(0.0, 0.4, 12 * nside**2)) / np.exp(0.08) - 1.0).astype(np.float32)
        cards = [("SHEET", index, ""), ("A_FAR", float(edges[index]), ""), ("A_NEAR", float(edges[index + 1]), ""),
                 ("SEED", 42, "simulation seed")]
        paths.append(write_nested_map(directory / f"delta-sheet-{index:02d}.fits", delta, cards))
    return paths


def evict(paths):
    """Drop the files' pages from the page cache (``posix_fadvise`` DONTNEED after an fsync: no root
    needed, other files untouched), so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_ranges(paths, ranges):
    """Read every path once over the given pixel ranges into float64, with the stage's reader."""
    for path in paths:
        with MapRangeReader(read_header_and_layout(path)[1]) as reader:
            for start, stop in ranges:
                reader.read_into(start, stop, np.empty(stop - start))


def read_whole(paths, npix):
    read_ranges(paths, [(0, npix)])


def read_pieces(paths, npix):
    piece = min(BORN_READ_PIXELS, npix // 12, MAX_PIXELS_PER_TASK)
    read_ranges(paths, [(start, start + piece) for start in range(0, npix, piece)])


def read_healpy(paths, npix):
    for path in paths:
        hp.read_map(str(path), nest=True, dtype=np.float64)


READS = {"a": read_whole, "a'": read_pieces, "a0": read_healpy}
# A baseline read in a fresh process, timed after the imports as the pipeline's execute() is.
READ_DRIVER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench_kappa import READS
paths = sorted(Path(sys.argv[3]).glob("delta-sheet-*.fits"))
began = time.perf_counter()
READS[sys.argv[2]](paths, 12 * int(sys.argv[4])**2)
print("READ", time.perf_counter() - began, flush=True)
"""


def run_read(mode, sheets_dir, nside, timeout=3600):
    """Seconds of one baseline read (``READS[mode]``) of every sheet in a fresh python process."""
    done = run_python(["-c", READ_DRIVER, str(Path(__file__).parent), mode, str(sheets_dir), str(nside)],
                      timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"baseline read ({mode}) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return float(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("READ ")))


def run_kappa(config_path, nranks, timeout=3600):
    """(command wall seconds, per-rank rows of the driver)."""
    began = time.perf_counter()
    done = run_python(["-c", DRIVER, str(config_path)], nranks=nranks, timeout=timeout)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"kappa on {nranks} rank(s) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    rows = json.loads(next(line[6:] for line in done.stdout.splitlines() if line.startswith("BENCH ")))
    return wall, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, default=512, help="nside of the sheets (default 512)")
    parser.add_argument("--nsheets", type=int, default=60, help="number of sheets (default 60)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="repetitions of the read baselines and of each pipeline run, best kept (default 2)")
    parser.add_argument("--ranks", default="1,2", help="rank counts to run, comma-separated (default 1,2)")
    parser.add_argument("--cold", action="store_true",
                        help="evict the sheets from the page cache before every read and run (from the disk, as "
                             "on a cluster where the sheets were written by another job)")
    args = parser.parse_args()
    rank_counts = [int(n) for n in args.ranks.split(",")]
    npix = 12 * args.nside**2
    per_task = min(args.nside**2, MAX_PIXELS_PER_TASK)

    work = Path(tempfile.mkdtemp(prefix="bench_kappa_"))
    try:
        sheets_dir = work / "sheets"
        paths = write_sheets(sheets_dir, args.nside, args.nsheets)
        size_mb = sum(p.stat().st_size for p in paths) / 2**20
        print(f"{args.nsheets} sheets, nside {args.nside}, {size_mb:.0f} MB of float32 FITS; sources {list(SOURCES)}; "
              f"{npix // per_task} tasks of {per_task} pixels; load average {os.getloadavg()[0]:.2f}")
        cold = (lambda: evict(paths)) if args.cold else (lambda: None)
        print("page cache: " + ("cold (sheets evicted before every read and run)" if args.cold else "warm"))
        piece = min(BORN_READ_PIXELS, per_task)
        print(f"baselines, each in a fresh process like the pipeline (one pass after the imports): (a) every sheet "
              f"read once, whole, with the stage's reader; (a') the same on its {npix // piece} pieces per sheet; "
              "(a0) healpy.read_map")
        reads = {mode: [] for mode in READS}

        maps, runs = {}, {n: [] for n in rank_counts}
        for repetition in range(args.repeat):  # rank counts interleaved, so load changes hit both
            for nranks in rank_counts:
                out = work / f"ranks{nranks}_run{repetition}"
                out.mkdir()
                (out / "mass_sheets").symlink_to(sheets_dir, target_is_directory=True)
                config = out / "kappa.yaml"
                config.write_text(yaml.safe_dump({"output_dir": str(out),
                                                  "kappa": {"source_redshifts": list(SOURCES)}}))
                if nranks == rank_counts[0]:  # the baselines once per repetition, between the pipeline runs
                    for mode in READS:
                        cold()
                        reads[mode].append(run_read(mode, sheets_dir, args.nside))
                    print(f"\nreads, run {repetition + 1}: " + ", ".join(f"({mode}) {reads[mode][-1]:.2f} s"
                                                                     for mode in READS))
                cold()
                wall, rows = run_kappa(config, nranks)
                execute = max(row["execute_s"] for row in rows)
                runs[nranks].append({"command": wall, "execute": execute})
                steps = ", ".join(f"{name} {seconds:.2f}" for name, seconds in rows[0]["steps"].items())
                print(f"\n(b) {nranks} rank(s), run {repetition + 1}: command {wall:.2f} s, pipeline execute() "
                      f"{execute:.2f} s; load average {os.getloadavg()[0]:.2f}")
                print(f"    steps on rank 0 [s]: {steps}")
                for row in rows:
                    print(f"    rank {row['rank']}: start-up {row['startup_s']:.2f} s, "
                          f"execute {row['execute_s']:.2f} s, process CPU {row['cpu_s']:.2f} s "
                          f"({100 * row['cpu_s'] / row['wall_s']:.0f}% of its wall), "
                          f"peak RSS {row['peak_memory_mb']:.0f} MB (pipeline monitor), "
                          f"{row['high_water_mb']:.0f} MB (VmHWM)")
                maps.setdefault(nranks, {zs: (out / "kappa" / f"kappa_zs{zs}_s42.fits").read_bytes()
                                         for zs in SOURCES})

        baseline, piece_read, healpy_read = (min(reads[mode]) for mode in ("a", "a'", "a0"))
        print(f"\n(a)  read every sheet once, whole (stage reader): {baseline:6.2f} s ({size_mb / baseline:.0f} MB/s)")
        print(f"(a0) healpy.read_map of every sheet:             {healpy_read:6.2f} s "
              f"({healpy_read / baseline:.2f}x (a))")
        print(f"(a') stage reader on its {npix // piece} pieces per sheet:   {piece_read:6.2f} s "
              f"({piece_read / baseline:.2f}x (a))")
        floor = min(baseline, piece_read)
        print(f"\nbest of {args.repeat} run(s), ratios to (a) = {baseline:.2f} s and to the fastest read "
              f"min((a), (a')) = {floor:.2f} s:")
        for nranks in rank_counts:
            wall, execute = (min(run[key] for run in runs[nranks]) for key in ("command", "execute"))
            print(f"    {nranks} rank(s): command {wall:.2f} s ({wall / baseline:.2f}x), pipeline execute() "
                  f"{execute:.2f} s ({execute / baseline:.2f}x (a), {execute / floor:.2f}x fastest read; target "
                  f"<= {TARGET_RATIO}x: {'met' if execute / baseline <= TARGET_RATIO else 'NOT met'} against (a), "
                  f"{'met' if execute / floor <= TARGET_RATIO else 'NOT met'} against the fastest read)")
        for nranks in rank_counts[1:]:
            same = maps[nranks] == maps[rank_counts[0]]
            print(f"maps on {nranks} rank(s) byte-identical to {rank_counts[0]} rank(s): {same}")
            if not same:
                raise SystemExit("MISMATCH: the kappa maps depend on the rank count")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
