"""Prefetch (lensing_ssc.io.prefetch.prefetched) in the preprocessing and kappa inner loops: with vs without.

(a) Preprocessing: one slice of a synthetic usmesh (a BigFile with the FastPM HEALPIX layout: ``ID``
and ``Mass`` columns only, ``--nevents`` light-cone events each covering the full sky at ``--nside``
in sorted NEST order inside slice 2, plus a partial event in each neighbouring slice so that the
margin rows are read and dropped) turned into mass blocks by the production function
``preprocessing_steps.sheet_mass_blocks``, consumed completely. The function scans the slice's IDs once
(``UsmeshCatalog.sorted_id_runs``: one ID-sorted run per light-cone event, here ``--nevents``), reads
each run's pieces (``UsmeshCatalog.iter_run_pixels``), wraps each run in ``prefetched(..., depth=1)``
when the rank has a spare core, and merges the runs one pixel block at a time
(``sorted_runs.merged_mass_blocks``). Variants:

* ``serial``: the function with no run prefetched;
* ``prefetch dN``: the function with each run in ``prefetched(..., depth=N)`` (it calls ``prefetched``
  itself, once per run; each variant replaces that name in its module, see ``chunk_loop_prefetch``,
  and makes ``has_spare_core`` true, so that the replacement is called whatever the affinity);
* for reference, ``ID scan`` (``sorted_id_runs``, serial in every variant), ``read only`` (iterating
  every run's ``iter_run_pixels``: read + slice selection + ``ID - i npix``) and ``bin only``
  (``merged_mass_blocks`` over the same pieces held in memory; without the per-piece row tally of the
  production function): the ideal prefetched time is ID scan + max(read, bin).

Prefetch overlaps reading and binning, so its best is ``max(read, bin)`` instead of ``read + bin``: at
most 2x on that part, when they are equal. (a) runs twice: reading from the page cache (the "read" is
then CPU work - bigfile copies and the ID arithmetic - which needs a free core to overlap), and with
every piece of ``iter_run_pixels`` delayed as if read from storage at ``--storage-mbs`` MB/s (12 B per
row, ID and Mass; a GIL-free sleep in the thread that reads, i.e. waiting for a parallel file system;
the runs' reader threads share that bandwidth): the read then dominates and the binning hides behind
it. There prefetch can beat the "ideal": with one reader thread per run, one run's CPU work on its
piece also overlaps another run's wait, and the floor is about ID scan + the total wait (printed in
the header). The ID scan is not delayed (on real storage it would add the same wait, 8 B per row, to
every variant).

Every block of every variant (bin only included, every chunk size) is checked, as it comes out, to be
bit-identical to the map of an untimed serial run (a comparison inside the timings, the same for every
variant), and the rows tallied to be the same. Peak traced memory (tracemalloc, numpy arrays
included) of each variant is taken in a separate pass, so that tracing does not disturb the timings.

(b) Kappa: ``kappa_steps.born_sum_range`` over one task (``--kappa-pixels`` NESTED pixels) of
``--nsheets`` float32 sheets (nside ``--kappa-nside``) and 5 sources, with its loop over read pieces not
prefetched (``serial``) and prefetched at depth 1 (the production wiring), against reading the same
pieces only; results are checked to be equal.

First printed: the overlap ceiling of the machine (two copies of a memory-bound numpy loop in two
threads vs one after the other); on this project's 2-vCPU machine it is far below 2, which caps
what prefetch can gain here.

Timings are the best of ``--repeat`` runs, variants interleaved, page cache warm; compare only
ratios taken in one run (the machine is shared).

Usage: python benchmarks/bench_prefetch.py [--nside 1024] [--nevents 3] [--chunk-sizes 1000000,4000000,10000000]
       [--repeat 3] [--storage-mbs 500] [--nsheets 40] [--kappa-nside 512] [--kappa-pixels 262144] [--workdir DIR]
"""
import argparse
import os
import shutil
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from unittest import mock

import bigfile
import numpy as np

from lensing_ssc.io.healpix_maps import MapRangeReader, read_header_and_layout, write_nested_map
from lensing_ssc.io.prefetch import prefetched
from lensing_ssc.io.usmesh import UsmeshCatalog
from lensing_ssc.processing.steps import kappa_steps, preprocessing_steps
from lensing_ssc.processing.steps.kappa_steps import BORN_READ_PIXELS, SheetInfo
from lensing_ssc.processing.steps.preprocessing_steps import (_MASS_BLOCK, MAX_SORTED_RUNS, SLICE_ROW_MARGIN, RowTally,
                                                              sheet_mass_blocks)
from lensing_ssc.science.sorted_runs import merged_mass_blocks

NSLICES = 4
SLICE = 2
DEPTHS = (1, 2)


# ------------------------------------------------------------------------------------------------
# (a) preprocessing

def write_synthetic_usmesh(path: Path, nside: int, nevents: int, seed: int = 0) -> int:
    """A usmesh BigFile with the HEALPIX layout the reader needs; returns the rows of slice SLICE."""
    npix = 12 * nside ** 2
    rng = np.random.default_rng(seed)
    runs = [(SLICE - 1, rng.random(npix) < 0.3)] + [(SLICE, None)] * nevents + [(SLICE + 1, rng.random(npix) < 0.3)]
    sizes = np.zeros(NSLICES + 2, dtype=np.int64)
    out = bigfile.File(str(path), create=True)
    header = out.create("Header", dtype=np.dtype(("i8", (0,))), size=0, Nfile=1)
    for key, value in {"BoxSize": [500.0], "NC": [64], "MassTable": [0.0, 5.0, 0, 0, 0, 0],
                       "OmegaM": [0.309], "HubbleParam": [0.6774], "seed": [1]}.items():
        header.attrs[key] = np.asarray(value)
    header.close()
    healpix = out.create("HEALPIX", dtype=np.dtype(("i8", (0,))), size=0, Nfile=0)  # attrs-only group block
    ids = out.create("HEALPIX/ID", dtype="i8", size=0, Nfile=1)
    mass = out.create("HEALPIX/Mass", dtype="f4", size=0, Nfile=1)
    for index, keep in runs:  # one file per light-cone event, rows sorted by ID inside it
        pixels = np.arange(npix, dtype=np.int64) if keep is None else np.flatnonzero(keep)
        ids.append(index * npix + pixels, Nfile=1)
        mass.append(rng.gamma(2.0, 2.5, pixels.size).astype(np.float32), Nfile=1)
        sizes[index + 1] += pixels.size
    ids.close()
    mass.close()
    for key, value in {"healpix.npix": [npix], "healpix.nside": [nside], "healpix.nslices": [NSLICES],
                       "aemitIndex.edges": np.linspace(0.0, 1.0, NSLICES + 1),
                       "aemitIndex.offset": np.concatenate([[0], np.cumsum(sizes)])}.items():
        healpix.attrs[key] = np.asarray(value)
    healpix.close()
    out.close()
    return int(sizes[SLICE + 1])


class RunSource:
    """A UsmeshCatalog stand-in for ``sheet_mass_blocks``: the pieces of a sorted run come from
    ``pieces(i, run, chunk_size)``, every other attribute from the catalog."""

    def __init__(self, catalog: UsmeshCatalog, pieces):
        self._catalog = catalog
        self._pieces = pieces

    def __getattr__(self, name):
        return getattr(self._catalog, name)

    def iter_run_pixels(self, i, run, chunk_size):
        return self._pieces(i, run, chunk_size)


def slower_storage(pieces, storage_mbs, channel: threading.Lock):
    """The pieces ``(ipix, mass)`` of a run, each followed by the wait for its rows of ID and Mass (12 B per
    row) from storage at ``storage_mbs`` MB/s: a GIL-free sleep in the thread that reads (the reader thread
    when prefetched), as a read from a parallel file system would be. The sleep holds ``channel``: the
    runs read through it share that bandwidth (each run's reader thread would otherwise get all of it)."""
    for ipix, mass in pieces:
        with channel:
            time.sleep(12 * ipix.size / (storage_mbs * 1e6))
        yield ipix, mass


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def traced_peak_mb(function):
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def overlap_ceiling(repeat: int) -> float:
    """Speed-up of running two copies of a memory-bound numpy loop (integer division + bincount of
    4e6 rows) in two threads over running them one after the other: the most any overlap of read and
    binning can gain on this machine (2 = two independent cores and memory paths)."""
    ids = np.arange(4_000_000, dtype=np.int64) * 3
    pixels = np.sort(np.random.default_rng(0).integers(0, 12 * 1024 ** 2, ids.size))
    weights = np.random.default_rng(1).random(ids.size)

    def work():
        for _ in range(10):
            np.bincount(pixels, weights=weights, minlength=12 * 1024 ** 2)
            ids // 12582912

    def both():
        other = threading.Thread(target=work)
        other.start()
        work()
        other.join()
    one = min(timed(work)[0] for _ in range(repeat))
    two = min(timed(both)[0] for _ in range(repeat))
    return 2 * one / two


def chunk_loop_prefetch(depth: int, module=preprocessing_steps):
    """Context in which ``module``'s loops (``sheet_mass_blocks``' runs by default) prefetch at ``depth``
    (0: not at all); ``replacement.calls`` counts the iterables wrapped.

    The production function calls ``prefetched`` on its runs or blocks; this replaces that name in
    its module, so every variant times the production function itself.
    """
    def replacement(iterable, **_):
        replacement.calls += 1
        return prefetched(iterable, depth=depth) if depth else iter(iterable)
    replacement.calls = 0
    return mock.patch.object(module, "prefetched", replacement)


def consume(blocks, reference: np.ndarray, name: str) -> None:
    """Iterate the mass blocks, checking each against its pixels of ``reference`` (float64 (npix,))."""
    start = 0
    for block in blocks:
        if not np.array_equal(block, reference[start:start + block.size]):
            raise AssertionError(f"{name}: mass block at pixel {start} differs from the reference map")
        start += block.size
    if start != reference.size:
        raise AssertionError(f"{name}: {start} pixels of mass blocks, expected {reference.size}")


def bench_preprocessing(path: Path, chunk_sizes, repeat: int, storage_mbs: float):
    catalog = UsmeshCatalog(path)
    channel = threading.Lock()

    def reads(i, run, chunk_size):
        pieces = catalog.iter_run_pixels(i, run, chunk_size)
        return slower_storage(pieces, storage_mbs, channel) if storage_mbs else pieces

    def id_runs(chunk_size):
        runs = catalog.sorted_id_runs(SLICE, chunk_size, margin=SLICE_ROW_MARGIN, max_runs=MAX_SORTED_RUNS)
        if runs is None:
            raise AssertionError(f"{path}: slice {SLICE} is not in ID-sorted runs: sheet_mass_blocks would take "
                                 "the whole-map route")
        return runs

    source = RunSource(catalog, reads)
    variants = {"serial": 0, **{f"prefetch d{d}": d for d in DEPTHS}}

    def blocks(depth, chunk_size, nruns, reference=None, name="serial"):
        """Consume sheet_mass_blocks with each run prefetched at ``depth``; its blocks concatenated when
        ``reference`` is None, else checked against it. Returns (map or None, rows tallied)."""
        tally = RowTally()
        with chunk_loop_prefetch(depth) as replacement, \
                mock.patch.object(preprocessing_steps, "has_spare_core", lambda: True):
            produced = sheet_mass_blocks(source, SLICE, chunk_size, tally)
            mass = np.concatenate(list(produced)) if reference is None else consume(produced, reference, name)
        if replacement.calls != nruns:
            raise AssertionError(f"sheet_mass_blocks called prefetched() {replacement.calls} times for {nruns} "
                                 "runs: update this benchmark")
        return mass, tally.rows

    runs = id_runs(chunk_sizes[0])
    reference, reference_rows = blocks(0, chunk_sizes[0], len(runs))
    rows = catalog.rows_per_slice()[SLICE]
    where = (f"storage simulated at {storage_mbs:g} MB/s (waits {12 * rows / (storage_mbs * 1e6):.3f}s in all)"
             if storage_mbs else "page cache")
    print(f"\n(a) preprocessing, {where}: slice {SLICE} of {path} (nside {catalog.nside}, "
          f"{rows:,} rows in {len(runs)} ID-sorted runs, "
          f"{catalog.nrows:,} rows in the file)")
    print(f"{'chunk rows':>11} {'ID scan':>8} {'read only':>10} {'bin only':>9} {'ideal':>7} "
          + " ".join(f"{name:>12}" for name in variants) + "   ratio serial/prefetch   peak MB (tracemalloc)")
    for chunk_size in chunk_sizes:
        best = {name: np.inf for name in ("ID scan", "read only", "bin only", *variants)}
        for _ in range(repeat):
            seconds, runs = timed(lambda: id_runs(chunk_size))
            best["ID scan"] = min(best["ID scan"], seconds)
            best["read only"] = min(best["read only"], timed(
                lambda: sum(1 for run in runs for _ in reads(SLICE, run, chunk_size)))[0])
            held = [list(catalog.iter_run_pixels(SLICE, run, chunk_size)) for run in runs]
            best["bin only"] = min(best["bin only"], timed(lambda: consume(
                merged_mass_blocks([iter(pieces) for pieces in held], catalog.npix, _MASS_BLOCK), reference,
                "bin only"))[0])
            del held
            for name, depth in variants.items():
                seconds, (_, rows) = timed(lambda: blocks(depth, chunk_size, len(runs), reference, name))
                best[name] = min(best[name], seconds)
                if rows != reference_rows:
                    raise AssertionError(f"{name}: {rows} rows tallied, the reference run {reference_rows}")
        peaks = {name: traced_peak_mb(lambda: blocks(depth, chunk_size, len(runs), reference, name))
                 for name, depth in variants.items()}
        ideal = best["ID scan"] + max(best["read only"], best["bin only"])
        ratios = " ".join(f"{best['serial'] / best[f'prefetch d{d}']:.2f}x(d{d})" for d in DEPTHS)
        print(f"{chunk_size:>11,} {best['ID scan']:>7.3f}s {best['read only']:>9.3f}s {best['bin only']:>8.3f}s "
              f"{ideal:>6.3f}s " + " ".join(f"{best[name]:>11.3f}s" for name in variants) + f"   {ratios}   "
              + " / ".join(f"{peaks[name]:.0f}" for name in variants))


# ------------------------------------------------------------------------------------------------
# (b) kappa

def bench_kappa(directory: Path, nside: int, nsheets: int, pixels: int, repeat: int):
    npix = 12 * nside ** 2
    rng = np.random.default_rng(1)
    sheets = []
    for index in range(nsheets):
        path = directory / f"delta-sheet-{index:02d}.fits"
        write_nested_map(path, rng.lognormal(0.0, 0.5, npix).astype(np.float32) - 1.0)
        sheets.append(SheetInfo(index, str(path), 0.3 + 0.01 * index, 0.31 + 0.01 * index, 0, 0,
                                read_header_and_layout(path)[1]))
    weights = rng.random((5, nsheets)) * (rng.random((5, nsheets)) < 0.8)
    start, stop = npix // 3, npix // 3 + pixels
    piece = min(BORN_READ_PIXELS, pixels)

    def read_only():
        for sheet in sheets:
            with MapRangeReader(sheet.layout) as reader:
                for first in range(start, stop, piece):
                    reader.read_into(first, first + piece, np.empty(piece))

    def born_sum(depth):
        with chunk_loop_prefetch(depth, kappa_steps) as replacement:
            total = kappa_steps.born_sum_range(sheets, weights, start, stop)
        if len(os.sched_getaffinity(0)) > 1 and replacement.calls != 1:
            raise AssertionError("born_sum_range no longer calls prefetched: the variants would be equal")
        return total

    variants = {"serial": 0, "prefetch d1": 1}  # the stage's ring of read pieces holds depth 1 only
    best = {name: np.inf for name in ("read only", *variants)}
    reference = born_sum(0)
    for _ in range(repeat):
        best["read only"] = min(best["read only"], timed(read_only)[0])
        for name, depth in variants.items():
            seconds, total = timed(lambda: born_sum(depth))
            best[name] = min(best[name], seconds)
            if not np.array_equal(total, reference):
                raise AssertionError(f"{name}: kappa partial sums differ from the serial ones")
    print(f"\n(b) kappa: born_sum_range over {pixels:,} NESTED pixels of {nsheets} nside-{nside} sheets, 5 sources")
    print(f"read only {best['read only']:.3f}s   " + "   ".join(f"{name} {best[name]:.3f}s" for name in variants)
          + f"   ratio serial/prefetch {best['serial'] / best['prefetch d1']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nside", type=int, default=1024)
    parser.add_argument("--nevents", type=int, default=3)
    parser.add_argument("--chunk-sizes", default="1000000,4000000,10000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--storage-mbs", type=float, default=500.0,
                        help="also run (a) with reads slowed to this bandwidth [MB/s] (0: page cache only)")
    parser.add_argument("--nsheets", type=int, default=40)
    parser.add_argument("--kappa-nside", type=int, default=512)
    parser.add_argument("--kappa-pixels", type=int, default=2**18)
    parser.add_argument("--workdir", default=None, help="where to write the inputs (default: a temporary directory)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.1f} (overlapping CPU work needs a free core)")
    print(f"overlap ceiling: two memory-bound numpy loops in two threads run {overlap_ceiling(args.repeat):.2f}x "
          "faster than one after the other (2.00 = no shared bottleneck)")
    workdir = Path(tempfile.mkdtemp(prefix="bench_prefetch_", dir=args.workdir))
    try:
        seconds, rows = timed(lambda: write_synthetic_usmesh(workdir / "usmesh", args.nside, args.nevents))
        print(f"synthetic usmesh: {rows:,} rows in slice {SLICE}, written in {seconds:.1f}s")
        chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")]
        bench_preprocessing(workdir / "usmesh", chunk_sizes, args.repeat, storage_mbs=0)
        if args.storage_mbs:
            bench_preprocessing(workdir / "usmesh", chunk_sizes, args.repeat, storage_mbs=args.storage_mbs)
        shutil.rmtree(workdir / "usmesh")
        bench_kappa(workdir, args.kappa_nside, args.nsheets, args.kappa_pixels, args.repeat)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
