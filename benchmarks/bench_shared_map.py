"""Memory of ``lensing-ssc analyze`` on 2 ranks of one node with the node-shared map vs one copy per rank.

One Gaussian NESTED kappa map (tests/conftest.py ``write_gaussian_kappa``, ``--nside``) is analysed
through the command line on ``--ranks`` ranks with ``pipeline.node_shared_maps: true`` (one RING map per
node in an MPI-3 shared-memory window, read by node-local rank 0) and ``false`` (every rank reads and
reorders its own copy), each run in a fresh output directory, ``--repeat`` times interleaved. With the
default ``preprocessing.validation_level: strict`` rank 0 first reads every map once to check it (the same
in both modes); ``--validation-level none`` leaves only the statistics step's map.

Memory figures, per rank and per node (this machine is one node):

* peak RSS: the kernel's high-water mark (``getrusage`` ru_maxrss, exact). RSS counts every resident page
  a process maps, shared ones included, so a rank reading the shared map counts the pages it touched
  although they exist once on the node;
* peak USS (unique set size: pages mapped by this process only) and PSS (proportional set size: each
  shared page divided among the processes mapping it), from psutil ``memory_full_info`` sampled every
  ``--interval`` s by this script for every rank at the same instants (sampled peaks: lower bounds);
* per node: the peak over time of the sum of the ranks' PSS at one sampling instant, i.e. the memory the
  ranks occupy together with each shared page counted once (the number a node's memory limit sees,
  up to sampling).

Printed: one line per run and rank, then the ratios shared / per-rank copies of rank 1's peak RSS, USS
and PSS and of the node's peak total PSS (of each mode the highest peak over the runs: sampling can only
miss a peak), and the size of one map.
The results files of the two modes are checked to be identical.

Usage: python benchmarks/bench_shared_map.py [--nside 1024] [--xsize 128] [--npatch 0] [--batch-size 8]
       [--ranks 2] [--repeat 1] [--validation-level strict|none] [--interval 0.02] [--keep]
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import psutil
import yaml

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "tests"))
from bench_analysis_ranks import run_stage, same_results  # noqa: E402  (same directory)
from conftest import write_gaussian_kappa  # noqa: E402

from lensing_ssc.science.fibonacci import patch_centers  # noqa: E402

MIB = 2 ** 20
MODES = {"shared": True, "per-rank": False}


class RankSampler:
    """Samples USS and PSS of this process's MPI descendants (the ranks) every ``interval`` seconds."""

    def __init__(self, interval: float):
        self.interval = interval
        self.peaks = {}  # rank -> {"uss": bytes, "pss": bytes}
        self.node_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ranks = {}  # pid -> rank

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _rank_of(self, process):
        """The MPI rank of a descendant process, None for mpiexec's helpers (and a rank not yet exec'd)."""
        if process.pid not in self._ranks:
            environ = process.environ()
            rank = environ.get("OMPI_COMM_WORLD_RANK", environ.get("PMI_RANK"))
            if rank is None:
                return None
            self._ranks[process.pid] = int(rank)
        return self._ranks[process.pid]

    def _run(self):
        me = psutil.Process()
        while not self._stop.wait(self.interval):
            total = 0
            for process in me.children(recursive=True):
                try:
                    rank = self._rank_of(process)
                    if rank is None:
                        continue
                    info = process.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                peak = self.peaks.setdefault(rank, {"uss": 0, "pss": 0})
                peak["uss"], peak["pss"] = max(peak["uss"], info.uss), max(peak["pss"], info.pss)
                total += info.pss
            self.node_pss = max(self.node_pss, total)


def write_config(out, centers, args, shared):
    config = out / "analysis.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(out), "pipeline": {"batch_size": args.batch_size, "node_shared_maps": shared},
        "preprocessing": {"validation_level": args.validation_level},
        "analysis": {"xsize": args.xsize, "centers": centers}}))
    return config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, default=1024, help="HEALPix nside of the kappa map (default 1024)")
    parser.add_argument("--xsize", type=int, default=128, help="patch side in pixels (default 128)")
    parser.add_argument("--npatch", type=int, default=0, help="number of 10-deg patches, 0 = all 265 (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="patches per task (default 8)")
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks, all on this node (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode, interleaved (default 1)")
    parser.add_argument("--validation-level", default="strict", choices=["strict", "none"],
                        help="preprocessing.validation_level: strict (default) reads every map once on rank 0 "
                             "before the statistics; none isolates the statistics step")
    parser.add_argument("--interval", type=float, default=0.02, help="USS/PSS sampling period [s] (default 0.02)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.ranks < 2:
        parser.error("--ranks: expected >= 2 (one rank has nothing to share)")

    work = Path(tempfile.mkdtemp(prefix="bench_shared_map_"))
    try:
        write_gaussian_kappa(work / "maps", nside=args.nside, random_seed=3)
        map_mib = 12 * args.nside ** 2 * 8 / MIB
        theta, phi = patch_centers(10.0)
        npatch = theta.size if args.npatch <= 0 else min(args.npatch, theta.size)
        centers = np.degrees(np.column_stack([theta, phi]))[:npatch].tolist()
        print(f"kappa map nside {args.nside} (RING float64 map {map_mib:.0f} MiB); {npatch} patches of 10 deg, "
              f"{args.xsize}^2 px, all statistics; batch_size {args.batch_size}; validation_level "
              f"{args.validation_level}; {args.ranks} ranks on one node; "
              f"load average {os.getloadavg()[0]:.2f}")

        best, results = {}, {}
        for repetition in range(args.repeat):  # modes interleaved, so load changes hit both
            for mode, shared in MODES.items():
                out = work / f"{mode}_run{repetition}"
                out.mkdir()
                (out / "kappa").symlink_to(work / "maps", target_is_directory=True)
                with RankSampler(args.interval) as sampler:
                    wall, ranks, _ = run_stage("analyze", write_config(out, centers, args, shared), args.ranks)
                results.setdefault(mode, out / "stats" / "stats_zs1.0_s7_oa10.h5")
                print(f"\n{mode}, run {repetition + 1}: {wall:.1f} s; node peak total PSS "
                      f"{sampler.node_pss / MIB:.0f} MiB")
                figures = {"node_pss": sampler.node_pss / MIB}
                for row in ranks:
                    peak = sampler.peaks.get(row["rank"], {"uss": 0, "pss": 0})
                    print(f"    rank {row['rank']}: peak RSS {row['peak_rss_mb']:.0f} MiB, peak USS "
                          f"{peak['uss'] / MIB:.0f} MiB, peak PSS {peak['pss'] / MIB:.0f} MiB")
                    if row["rank"] == 1:
                        figures.update(rss=row["peak_rss_mb"], uss=peak["uss"] / MIB, pss=peak["pss"] / MIB)
                best[mode] = {key: max(value, best.get(mode, figures)[key]) for key, value in figures.items()}

        shared, copies = best["shared"], best["per-rank"]
        print(f"\nhighest peaks of {args.repeat} run(s), shared / per-rank copies (one map = {map_mib:.0f} MiB):")
        for key, label in (("rss", "rank 1 peak RSS"), ("uss", "rank 1 peak USS"), ("pss", "rank 1 peak PSS"),
                           ("node_pss", "node peak total PSS")):
            print(f"    {label:<20} {shared[key]:7.0f} MiB / {copies[key]:7.0f} MiB = {shared[key] / copies[key]:.2f} "
                  f"(saved {copies[key] - shared[key]:.0f} MiB = {(copies[key] - shared[key]) / map_mib:.2f} maps)")

        count, same = same_results(results["shared"], results["per-rank"])
        print(f"results files of the two modes: {count} datasets, identical: {same}")
        if not same:
            raise SystemExit("MISMATCH: the node-shared map changes the results")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
