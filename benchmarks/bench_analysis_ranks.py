"""Time the analysis stage (``lensing-ssc analyze``) on 1 and on 2 MPI ranks: patches per second.

One synthetic NESTED kappa map (Gaussian random field with ell(ell+1)C/2pi = 1e-4 (ell/1000)^0.5,
made with healpy.synfast) is analysed with every built-in statistic at the production noise levels
and smoothing scales, through the command line, once per rank count and repetition, each run in a
fresh output directory (``--repeat`` runs per rank count, interleaved, the best kept). The patches
are the first ``--npatch`` Fibonacci centres of 10-degree patches (given as ``analysis.centers``;
0 = all 265). The script prints, per run, the wall time of the whole command and of the statistics
step (the slowest rank's task loop, from the per-rank table the stage logs) as patches per second,
each rank's CPU share (below 100% the rank waited for a core: the machine is shared), CPU seconds
and peak RSS; then the best figures, the speed-ups over one rank, and the ratio of the busiest
process's CPU seconds (the speed-up to expect on dedicated cores). It checks that every dataset of
the results files is identical across rank counts.

Children run ``lensing_ssc.cli.main`` (plain python for one rank, ``mpiexec -n N`` otherwise, with
OMPI_ALLOW_RUN_AS_ROOT set) plus one line that reports each rank's wall time and peak RSS.

Usage: python benchmarks/bench_analysis_ranks.py [--nside 512] [--xsize 512] [--npatch 80] [--ranks 1,2]
       [--batch-size 4] [--repeat 1] [--keep]
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import run_python  # noqa: E402  (launches python on 1..n ranks in a clean MPI environment)

from lensing_ssc.io.healpix_maps import write_nested_map  # noqa: E402
from lensing_ssc.science.fibonacci import patch_centers  # noqa: E402

TARGET_SPEEDUP = 1.8
# The CLI, then one JSON line per job with every rank's wall time, CPU time and peak RSS (the kernel's
# high-water mark VmHWM of the whole process; not getrusage's ru_maxrss, which a child inherits from the
# parent's RSS at the fork and keeps across exec).
DRIVER = """
import json, resource, sys, time
began = time.perf_counter()
from lensing_ssc.cli import main
from lensing_ssc.parallel import get_comm
code = main(sys.argv[1:])
comm = get_comm()
usage = resource.getrusage(resource.RUSAGE_SELF)
with open("/proc/self/status") as status:
    high_water_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024.0
row = {"rank": comm.rank, "wall_s": time.perf_counter() - began, "cpu_s": usage.ru_utime + usage.ru_stime,
       "peak_rss_mb": high_water_mb}
rows = comm.gather(row)
if comm.is_root:
    print("BENCH " + json.dumps(rows), flush=True)
sys.exit(code)
"""
RANK_TABLE_ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s*$")


def kappa_cl(lmax):
    """ell(ell+1)C/2pi = 1e-4 (ell/1000)^0.5 for ell >= 2."""
    ell = np.arange(lmax + 1, dtype=float)
    cl = np.zeros_like(ell)
    cl[2:] = 2 * np.pi * 1e-4 * (ell[2:] / 1000.0) ** 0.5 / (ell[2:] * (ell[2:] + 1))
    return cl


def run_stage(stage, config_path, nranks, timeout=3600):
    """Run ``lensing-ssc STAGE CONFIG`` on ``nranks`` ranks.

    Returns (wall seconds of the command, per-rank rows {rank, wall_s, cpu_s, peak_rss_mb}, per-rank
    task-loop table rows {rank, time_s, tasks, peak_mb, cpu_percent} of every StageRunner the stage
    logged).
    """
    began = time.perf_counter()
    done = run_python(["-c", DRIVER, stage, str(config_path)], nranks=nranks, timeout=timeout)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{stage} on {nranks} rank(s) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    ranks = json.loads(next(line[6:] for line in done.stdout.splitlines() if line.startswith("BENCH ")))
    loops = [{"rank": int(m[1]), "time_s": float(m[2]), "tasks": int(m[3]), "peak_mb": float(m[5]),
              "cpu_percent": float(m[6])}
             for m in (RANK_TABLE_ROW.match(line) for line in done.stderr.splitlines()) if m]
    return wall, ranks, loops


def datasets(path):
    found = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def same_results(path, other_path):
    """(number of datasets in ``other_path``, whether the two results files hold identical datasets)."""
    first, second = datasets(path), datasets(other_path)
    return len(second), sorted(first) == sorted(second) and all(
        np.array_equal(first[name], second[name]) for name in first)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, default=512, help="HEALPix nside of the kappa map (default 512)")
    parser.add_argument("--xsize", type=int, default=512, help="patch side in pixels (default 512)")
    parser.add_argument("--npatch", type=int, default=80, help="number of patches, 0 = all 265 (default 80)")
    parser.add_argument("--batch-size", type=int, default=4, help="patches per task (default 4)")
    parser.add_argument("--ranks", default="1,2", help="rank counts to run, comma-separated (default 1,2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per rank count, interleaved, best kept (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    rank_counts = [int(n) for n in args.ranks.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench_analysis_ranks_"))
    try:
        np.random.seed(3)
        ring = hp.synfast(kappa_cl(3 * args.nside - 1), args.nside)
        map_dir = work / "maps"
        write_nested_map(map_dir / "kappa_zs1.0_s7.fits", hp.reorder(ring, r2n=True), [("ZS", 1.0, "source redshift")])
        theta, phi = patch_centers(10.0)
        npatch = theta.size if args.npatch <= 0 else min(args.npatch, theta.size)
        centers = np.degrees(np.column_stack([theta, phi]))[:npatch].tolist()
        print(f"kappa map nside {args.nside}; {npatch} patches of 10 deg, {args.xsize}^2 px, all statistics "
              f"(5 ngal x 4 scales); batch_size {args.batch_size}; load average {os.getloadavg()[0]:.2f}")

        results, runs = {}, {n: [] for n in rank_counts}
        for repetition in range(args.repeat):  # rank counts interleaved, so load changes hit both
            for nranks in rank_counts:
                out = work / f"ranks{nranks}_run{repetition}"
                out.mkdir()
                (out / "kappa").symlink_to(map_dir, target_is_directory=True)
                config = out / "analysis.yaml"
                config.write_text(yaml.safe_dump({
                    "output_dir": str(out), "pipeline": {"batch_size": args.batch_size},
                    "analysis": {"xsize": args.xsize, "centers": centers}}))
                wall, ranks, loops = run_stage("analyze", config, nranks)
                loop_s = max(row["time_s"] for row in loops)
                results.setdefault(nranks, out / "stats" / "stats_zs1.0_s7_oa10.h5")
                busiest_cpu = max(row["cpu_s"] for row in ranks)
                runs[nranks].append({"command": wall, "loop": loop_s, "cpu": busiest_cpu})
                print(f"\n{nranks} rank(s), run {repetition + 1}: command {wall:.1f} s = "
                      f"{npatch / wall:.2f} patches/s; statistics step {loop_s:.1f} s = "
                      f"{npatch / loop_s:.2f} patches/s; "
                      f"load average {os.getloadavg()[0]:.2f}")
                for row in ranks:
                    loop = next(r for r in loops if r["rank"] == row["rank"])
                    print(f"    rank {row['rank']}: {loop['tasks']} tasks, task loop {loop['time_s']:.1f} s at "
                          f"{loop['cpu_percent']:.0f}% CPU; process {row['wall_s']:.1f} s wall, "
                          f"{row['cpu_s']:.1f} s CPU; peak RSS {row['peak_rss_mb']:.0f} MB")

        best = {n: {key: min(run[key] for run in runs[n]) for key in ("command", "loop", "cpu")} for n in rank_counts}
        one = best[rank_counts[0]]
        print(f"\nbest of {args.repeat} run(s), speed-ups over {rank_counts[0]} rank(s):")
        for nranks in rank_counts:
            fig = best[nranks]
            print(f"    {nranks} rank(s): command {npatch / fig['command']:.2f} patches/s "
                  f"({one['command'] / fig['command']:.2f}x), statistics step {npatch / fig['loop']:.2f} patches/s "
                  f"({one['loop'] / fig['loop']:.2f}x); busiest process {fig['cpu']:.1f} CPU s "
                  f"({one['cpu'] / fig['cpu']:.2f}x: the speed-up to expect on dedicated cores)")
        if rank_counts[0] == 1 and 2 in best:
            met = one["command"] / best[2]["command"] >= TARGET_SPEEDUP
            print(f"    target >= {TARGET_SPEEDUP}x on 2 ranks (whole command): {'met' if met else 'NOT met'}")

        for nranks in rank_counts[1:]:
            count, same = same_results(results[rank_counts[0]], results[nranks])
            print(f"results on {nranks} rank(s): {count} datasets, identical to {rank_counts[0]} rank(s): {same}")
            if not same:
                raise SystemExit("MISMATCH: the results depend on the rank count")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
