"""Scaling of the three stages: wall time and peak memory as nside, rows, sheets and patches grow.

Each point runs one stage (its pipeline's ``execute()``, one rank) in a fresh child process, in a fresh
output directory, on synthetic input, and records:

* time: wall and CPU seconds of ``execute()`` (after interpreter start-up and imports) and of the
  stage's main step (preprocess ``MassSheetGenerationStep``, kappa ``BornSumStep``, analysis
  ``StatisticsStep``), with the other steps' wall times;
* memory: the child's peak RSS above its RSS after the imports, in MiB, for the whole ``execute()``
  and for the main step: the child resets its high-water mark (``/proc/self/clear_refs`` <- 5, Linux)
  before ``execute()`` and before each step and reads ``VmHWM`` after each, so the interpreter with
  numpy, healpy, astropy, h5py and mpi4py loaded (~180 MB) does not mask the growth; next to it the
  stage's own estimate from ``lensing_ssc.processing.planning`` (what ``lensing-ssc plan`` prints).

Series (defaults; ``--quick`` smaller, ``--full`` larger):

* preprocess: rows 1e5, 1e6, 1e7 at nside 256 and nside 64-512 at 1e6 rows, in 40 sheets (usmesh
  written by ``bench_preprocess.write_usmesh``), ``--chunk-size`` 25 000 rows, so that a sheet spans
  10 chunks at 1e7 rows as a production slice spans tens of 10 M-row chunks. Expected: time ~ rows
  and memory independent of rows (bounded by npix and the chunk); memory ~ npix.
* kappa: nside 64-512 with 20 sheets and 10, 20, 40 sheets at nside 256 (sheets written by
  ``bench_kappa.write_sheets``), 5 sources. Expected: time ~ npix x nsheets, memory ~ npix.
* analysis: one Gaussian kappa map (``tests/conftest.write_gaussian_kappa``), every statistic at the
  production noise levels and scales: nside 64-512 at 8 patches of 256^2; xsize 128, 256, 512 at
  nside 128 (time per patch = StatisticsStep / patches; a small map, so that the patch work arrays are
  not hidden under the map's peak); 4, 8, 16 patches at nside 256. Expected: per-patch time ~ xsize^2
  log xsize, time ~ npatch, time nearly independent of nside (only reading and checking the map ~ npix);
  memory ~ npix (the map) + xsize^2 (patch work arrays).

Per series the script prints a table, then for each time and memory figure the growth exponent: the
slope of a least-squares fit of log(value) against log(size), and the local exponent of the last step,
log(value(n) / value(n/step)) / log(step), with the ratio value(n) / value(n/step), against the expected
exponent; and the marginal CPU cost of the main step per unit of size over the last step. Sizes are
rows, npix (for nside), sheets, patches and pixels per patch (xsize^2). Fixed costs (opening files,
config, cosmology tables, writing small outputs) flatten the fit at small sizes, so the verdict uses the
last step: "WORSE than expected" when it exceeds the expected exponent by more than 0.25 (a +-30 %
timing noise on a x4 step moves the exponent by 0.2). On this shared machine wall times follow the
load; the CPU times are the steadier figures. The 1-minute load average is printed at the start, per
point and at the end.

The synthetic usmesh puts each sheet's rows on distinct random pixels, so with fewer rows than
npix x sheets part of the sky stays empty: the preprocessing quality control then computes the
light-cone footprint (neighbour searches over the empty pixels, ``science/footprint.py``), which a
full-sky cone skips; its cost shows in the whole-stage figures, not in the main step's.

Usage: python benchmarks/bench_scaling.py [--quick | --full] [--stages preprocess,kappa,analysis]
       [--repeat 1] [--chunk-size 25000] [--keep]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import run_python, write_gaussian_kappa  # noqa: E402  (clean-environment child; kappa maps)

from bench_kappa import SOURCES, write_sheets  # noqa: E402
from bench_preprocess import write_usmesh  # noqa: E402
from lensing_ssc.processing.planning import (analysis_memory_mb, kappa_memory_mb,  # noqa: E402
                                             preprocess_memory_mb)
from lensing_ssc.science.fibonacci import patch_centers  # noqa: E402

TOLERANCE = 0.25  # exponent above the expected one that is called worse than expected
USMESH_SHEETS = 40
# One JSON line: execute() wall and CPU seconds, step timings, RSS after imports and peak RSS above it.
DRIVER = """
import json, sys, time
from pathlib import Path
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.processing import pipeline as pipelines
from lensing_ssc.processing.pipeline.base_pipeline import BasePipeline

def status_kib(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise SystemExit(f"/proc/self/status: no {key} line")

def reset_peak():
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)

step_peaks, step_cpu, run_step = {}, {}, BasePipeline._run_step

def measured_step(self, step, data):  # CPU seconds and peak RSS of each step (high-water mark reset at its start)
    reset_peak()
    cpu = time.process_time()
    try:
        return run_step(self, step, data)
    finally:
        step_cpu[step.name] = time.process_time() - cpu
        step_peaks[step.name] = (status_kib("VmHWM") - base) / 1024

BasePipeline._run_step = measured_step
config = ProcessingConfig.from_yaml(sys.argv[2])
reset_peak()
base = status_kib("VmRSS")
began, cpu = time.perf_counter(), time.process_time()
result = getattr(pipelines, sys.argv[1])(config).execute()
row = {"status": result.status, "execute_s": time.perf_counter() - began, "cpu_s": time.process_time() - cpu,
       "steps": result.step_timings, "step_cpu_s": step_cpu, "step_peaks_mb": step_peaks, "base_mb": base / 1024,
       "peak_mb": max([(status_kib("VmHWM") - base) / 1024] + list(step_peaks.values()))}
print("BENCH " + json.dumps(row), flush=True)
"""

PRESETS = {
    "quick": {"pre_rows": [1e5, 1e6], "pre_rows_nside": 128, "pre_nsides": [64, 128, 256], "pre_nside_rows": 3e5,
              "kappa_nsides": [64, 128, 256], "kappa_nsheets_fixed": 10, "kappa_nsheets": [5, 10, 20],
              "kappa_nsheets_nside": 128, "ana_nsides": [64, 128, 256], "ana_xsize_fixed": 128,
              "ana_npatch_fixed": 4, "ana_xsizes": [64, 128, 256], "ana_xsize_nside": 64,
              "ana_npatches": [2, 4, 8], "ana_npatch_nside": 128},
    "default": {"pre_rows": [1e5, 1e6, 1e7], "pre_rows_nside": 256, "pre_nsides": [64, 128, 256, 512],
                "pre_nside_rows": 1e6, "kappa_nsides": [64, 128, 256, 512], "kappa_nsheets_fixed": 20,
                "kappa_nsheets": [10, 20, 40], "kappa_nsheets_nside": 256, "ana_nsides": [64, 128, 256, 512],
                "ana_xsize_fixed": 256, "ana_npatch_fixed": 8, "ana_xsizes": [128, 256, 512],
                "ana_xsize_nside": 128, "ana_npatches": [4, 8, 16], "ana_npatch_nside": 256},
    "full": {"pre_rows": [1e5, 1e6, 1e7, 1e8], "pre_rows_nside": 512, "pre_nsides": [64, 128, 256, 512, 1024],
             "pre_nside_rows": 1e6, "kappa_nsides": [64, 128, 256, 512, 1024], "kappa_nsheets_fixed": 20,
             "kappa_nsheets": [10, 20, 40, 80], "kappa_nsheets_nside": 512, "ana_nsides": [64, 128, 256, 512, 1024],
             "ana_xsize_fixed": 256, "ana_npatch_fixed": 8, "ana_xsizes": [128, 256, 512, 1024, 2048],
             "ana_xsize_nside": 128, "ana_npatches": [4, 8, 16, 32], "ana_npatch_nside": 512},
}


@dataclass
class Point:
    """One measured size of a series: the size (the fitted variable), its label and the child's row."""

    size: float
    label: str
    row: dict
    plan_mb: float
    load: float


@dataclass
class Series:
    """A stage run at growing sizes of one variable, the others fixed.

    ``prepare(value) -> (config path, plan MiB)`` writes the input (once) and a fresh output directory
    and config for one run; ``size(value)`` is the fitted size; ``expected`` = (time exponent, memory
    exponent) in that size; ``per`` divides the times (e.g. by the patch count: time per patch).
    """

    stage: str
    title: str
    values: List
    size_name: str
    size: Callable
    prepare: Callable
    expected: tuple
    why: str
    per: int = 1
    points: List[Point] = field(default_factory=list)


PIPELINE_CLASS = {"preprocess": "PreprocessingPipeline", "kappa": "KappaPipeline", "analysis": "AnalysisPipeline"}
MAIN_STEP = {"preprocess": "MassSheetGenerationStep", "kappa": "BornSumStep", "analysis": "StatisticsStep"}


def run_stage(stage, config_path):
    """The driver's row for one run of ``stage`` with ``config_path`` (a fresh child process)."""
    done = run_python(["-c", DRIVER, PIPELINE_CLASS[stage], str(config_path)], timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{stage} with {config_path} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    row = json.loads(next(line[6:] for line in done.stdout.splitlines() if line.startswith("BENCH ")))
    if row["status"] != "success":
        raise SystemExit(f"{stage} with {config_path} ended with status {row['status']}")
    return row


def best_row(rows):
    """Smallest value of each figure over repeated runs (load only ever adds time)."""
    best = {key: min(row[key] for row in rows) for key in ("execute_s", "cpu_s", "peak_mb", "base_mb")}
    for key in ("steps", "step_cpu_s", "step_peaks_mb"):
        best[key] = {name: min(row[key][name] for row in rows) for name in rows[0][key]}
    return best


def exponents(sizes, values):
    """(least-squares slope of log value vs log size, last-step exponent, last-step value ratio, size ratio)."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.maximum(np.asarray(values, float), 1e-9))
    slope = float(np.polyfit(x, y, 1)[0])
    return slope, float((y[-1] - y[-2]) / (x[-1] - x[-2])), float(np.exp(y[-1] - y[-2])), float(np.exp(x[-1] - x[-2]))


def verdict(last, expected):
    return "WORSE than expected" if last > expected + TOLERANCE else "as expected or better"


def write_config(directory, body):
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


class Inputs:
    """Synthetic inputs, each written once and shared between the series (usmesh, sheets, kappa maps)."""

    def __init__(self, work: Path, chunk_size: int):
        self.work, self.chunk_size, self._made = work, chunk_size, {}

    def _once(self, key, make):
        if key not in self._made:
            directory = self.work / "inputs" / "_".join(map(str, key))
            began = time.perf_counter()
            self._made[key] = make(directory)
            print(f"    (input {key}: written in {time.perf_counter() - began:.1f} s)", flush=True)
        return self._made[key]

    def usmesh(self, nside, rows):
        def make(directory):
            directory.mkdir(parents=True)
            written = write_usmesh(directory / "usmesh", nside, rows, USMESH_SHEETS)
            if written != rows:  # rows split evenly over the sheets, each pixel at most once per sheet
                raise SystemExit(f"usmesh at nside {nside}: {written} of {rows} rows written ({USMESH_SHEETS} "
                                 f"sheets of at most {12 * nside ** 2} rows each, the same count in each)")
            return directory / "usmesh"
        return self._once(("usmesh", nside, rows), make)

    def sheets(self, nside, nsheets):
        def make(directory):
            write_sheets(directory, nside, nsheets)
            return directory
        return self._once(("sheets", nside, nsheets), make)

    def kappa_map(self, nside):
        return self._once(("kappa", nside), lambda directory: write_gaussian_kappa(directory, nside=nside).parent)

    def output_dir(self, name):
        directory = self.work / "runs" / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return directory

    # One run of each stage: (config path, plan MiB), in a fresh output directory.

    def preprocess_run(self, nside, rows):
        usmesh = self.usmesh(nside, int(rows))
        out = self.output_dir("preprocess")
        config = write_config(out, {"data_dir": str(usmesh), "output_dir": str(out), "seed": 1,
                                    "preprocessing": {"sheet_range": [0, 100], "chunk_size": self.chunk_size}})
        return config, preprocess_memory_mb(nside, self.chunk_size)

    def kappa_run(self, nside, nsheets):
        sheets = self.sheets(nside, nsheets)
        out = self.output_dir("kappa")
        (out / "mass_sheets").symlink_to(sheets, target_is_directory=True)
        config = write_config(out, {"output_dir": str(out), "kappa": {"source_redshifts": list(SOURCES)}})
        return config, kappa_memory_mb(nside, len(SOURCES), nsheets)

    def analysis_run(self, nside, xsize, npatch):
        maps = self.kappa_map(nside)
        out = self.output_dir("analysis")
        (out / "kappa").symlink_to(maps, target_is_directory=True)
        theta, phi = patch_centers(10.0)
        centers = np.degrees(np.column_stack([theta, phi]))[:npatch].tolist()
        config = write_config(out, {"output_dir": str(out), "pipeline": {"batch_size": 4},
                                    "analysis": {"xsize": xsize, "centers": centers}})
        return config, analysis_memory_mb(nside, xsize)


def npix(nside):
    return 12 * nside ** 2


def same(value):
    return value


def build_series(preset, inputs, stages):
    """The series of the chosen stages at the preset's sizes."""
    p = preset
    series = []
    if "preprocess" in stages:
        series += [
            Series("preprocess", f"rows at nside {p['pre_rows_nside']} ({USMESH_SHEETS} sheets, "
                   f"chunk_size {inputs.chunk_size})", p["pre_rows"], "rows", same,
                   lambda rows: inputs.preprocess_run(p["pre_rows_nside"], rows),
                   (1.0, 0.0), "time ~ rows (streamed), memory bounded by npix and the chunk, not rows"),
            Series("preprocess", f"nside at {p['pre_nside_rows']:.0e} rows ({USMESH_SHEETS} sheets)",
                   p["pre_nsides"], "npix", npix, lambda nside: inputs.preprocess_run(nside, p["pre_nside_rows"]),
                   (1.0, 1.0), "time: rows fixed, at most ~npix (per sheet: bincount length, overdensity, "
                   "FITS write); memory ~ npix"),
        ]
    if "kappa" in stages:
        series += [
            Series("kappa", f"nside at {p['kappa_nsheets_fixed']} sheets, {len(SOURCES)} sources",
                   p["kappa_nsides"], "npix", npix, lambda nside: inputs.kappa_run(nside, p["kappa_nsheets_fixed"]),
                   (1.0, 1.0), "time ~ npix x nsheets, memory ~ npix"),
            Series("kappa", f"sheets at nside {p['kappa_nsheets_nside']}", p["kappa_nsheets"], "sheets", same,
                   lambda nsheets: inputs.kappa_run(p["kappa_nsheets_nside"], nsheets),
                   (1.0, 0.0), "time ~ nsheets, memory independent of nsheets"),
        ]
    if "analysis" in stages:
        xsize, npatch = p["ana_xsize_fixed"], p["ana_npatch_fixed"]
        series += [
            Series("analysis", f"nside at {npatch} patches of {xsize}^2", p["ana_nsides"], "npix", npix,
                   lambda nside: inputs.analysis_run(nside, xsize, npatch),
                   (0.0, 1.0), "time ~ npatch, nearly independent of nside (map read ~ npix); memory ~ npix"),
            Series("analysis", f"xsize at nside {p['ana_xsize_nside']}, {npatch} patches (times per patch)",
                   p["ana_xsizes"], "xsize^2", lambda side: side * side,
                   lambda side: inputs.analysis_run(p["ana_xsize_nside"], side, npatch),
                   (1.0, 1.0), "time per patch ~ xsize^2 log xsize (exponent ~1.1 in xsize^2); memory: the map "
                   "+ ~xsize^2 patch arrays", per=npatch),
            Series("analysis", f"patches at nside {p['ana_npatch_nside']}, {xsize}^2", p["ana_npatches"],
                   "patches", same, lambda count: inputs.analysis_run(p["ana_npatch_nside"], xsize, count),
                   (1.0, 0.0), "time ~ npatch, memory independent of npatch"),
        ]
    return series


def measure(series, repeat):
    print(f"\n== {series.stage}: {series.title}; expected: {series.why}", flush=True)
    for value in series.values:
        rows = []
        for _ in range(repeat):
            config, plan_mb = series.prepare(value)
            rows.append(run_stage(series.stage, config))
        point = Point(series.size(value), f"{value:.0e}" if isinstance(value, float) else str(value),
                      best_row(rows), plan_mb, os.getloadavg()[0])
        series.points.append(point)
        print(f"    {point.label:>7}: execute {point.row['execute_s']:.2f} s, peak +{point.row['peak_mb']:.0f} MB "
              f"(load {point.load:.2f})", flush=True)


def report(series):
    """The table, exponents and marginal costs of one measured series (lines)."""
    main = MAIN_STEP[series.stage]
    short = main[:-4]  # "BornSumStep" -> "BornSum"
    per = "/patch" if series.per != 1 else ""
    columns = {"execute_s": lambda row: row["execute_s"], "cpu_s": lambda row: row["cpu_s"],
               f"{short}_s": lambda row: row["steps"][main], f"{short}_cpu_s": lambda row: row["step_cpu_s"][main]}
    imports = [point.row["base_mb"] for point in series.points]
    lines = [f"\n{series.stage}: {series.title} (RSS after imports {min(imports):.0f}-{max(imports):.0f} MB)",
             "    " + f"{'value':>7} {series.size_name:>9} " + " ".join(f"{name + per:>{len(name + per) + 2}}"
                                                                    for name in columns)
             + f" {'peak_MB':>8} {short + '_MB':>{len(short) + 5}} {'plan_MB':>8} {'load':>5}"]
    figures = {name: [] for name in columns}
    figures.update({"peak memory": [], f"{short} memory": []})
    for point in series.points:
        divide, row = series.per, point.row
        times = [get(row) / divide for get in columns.values()]
        for name, figure in zip(figures, times + [row["peak_mb"], row["step_peaks_mb"][main]]):
            figures[name].append(figure)
        lines.append("    " + f"{point.label:>7} {point.size:>9.3g} "
                     + " ".join(f"{t:>{len(name + per) + 2}.3f}" for name, t in zip(columns, times))
                     + f" {row['peak_mb']:>8.1f} {row['step_peaks_mb'][main]:>{len(short) + 5}.1f} "
                     f"{point.plan_mb:>8.1f} {point.load:>5.2f}")
    others = {name: seconds for name, seconds in series.points[-1].row["steps"].items() if name != main}
    lines.append(f"    other steps at {series.points[-1].label} [s]: "
                 + ", ".join(f"{name} {seconds:.2f}" for name, seconds in others.items()))
    sizes = [point.size for point in series.points]
    if len(sizes) < 2:
        return lines
    for name, values in figures.items():
        memory = name.endswith("memory")
        slope, last, ratio, step = exponents(sizes, values)
        expected = series.expected[1 if memory else 0]
        lines.append(f"    exponent of {name + ('' if memory else per):<24} fit {slope:5.2f}, last step {last:5.2f} "
                     f"(x{ratio:.2f} for x{step:g} {series.size_name}); expected {expected:g}: "
                     f"{verdict(last, expected)}")
    cpu = figures[f"{short}_cpu_s"]
    lines.append(f"    marginal {short} CPU over the last step: {(cpu[-1] - cpu[-2]) / (sizes[-1] - sizes[-2]):.3g} s "
                 f"per unit of {series.size_name}{per}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (1-2 minutes)")
    size.add_argument("--full", action="store_true", help="up to nside 1024, 1e8 rows, xsize 2048 (about 10 minutes)")
    parser.add_argument("--stages", default="preprocess,kappa,analysis",
                        help="comma-separated subset of preprocess,kappa,analysis")
    parser.add_argument("--repeat", type=int, default=1, help="runs per point, smallest figures kept (default 1)")
    parser.add_argument("--chunk-size", type=int, default=25_000,
                        help="preprocessing chunk_size in rows (default 25000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    stages = args.stages.split(",")
    unknown = set(stages) - set(PIPELINE_CLASS)
    if unknown:
        parser.error(f"--stages: unknown {sorted(unknown)}; expected some of {sorted(PIPELINE_CLASS)}")
    if args.repeat < 1 or args.chunk_size < 1:
        parser.error(f"--repeat and --chunk-size must be >= 1, got {args.repeat} and {args.chunk_size}")
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]

    began, load_start = time.perf_counter(), os.getloadavg()[0]
    print(f"bench_scaling: {'quick' if args.quick else 'full' if args.full else 'default'} sizes, stages {stages}, "
          f"repeat {args.repeat}; 1-minute load average at start {load_start:.2f} ({os.cpu_count()} cores)")
    work = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    try:
        inputs = Inputs(work, args.chunk_size)
        all_series = build_series(preset, inputs, stages)
        for series in all_series:
            measure(series, args.repeat)
        print("\n" + "=" * 100 + "\nper series: times in s, peak_MB = peak RSS above the RSS after imports (MiB), "
              "<step>_MB = the same for the main step, plan_MB = the stage's estimate (lensing-ssc plan)")
        for series in all_series:
            print("\n".join(report(series)))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n1-minute load average at end {os.getloadavg()[0]:.2f} (start {load_start:.2f}); "
          f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
