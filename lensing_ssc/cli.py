"""The ``lensing-ssc`` command line (DESIGN.md §3). Same commands on one rank and under mpiexec/srun.

Exit codes: 0 success, 2 bad config or input, 3 resource error, 75 checkpointed (rerun to resume),
1 anything else. Under MPI every rank exits with the same code; an unexpected exception on one rank
aborts the whole job. Errors are one line on stderr; tracebacks go to the log at debug level.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from lensing_ssc import __version__
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import (EXIT_BAD_INPUT, EXIT_CHECKPOINTED, EXIT_OK, InputError, LensingSSCError,
                                     exit_code_for, is_disk_full)
from lensing_ssc.io.atomic import disk_full_error
from lensing_ssc.parallel import abort_on_exception, get_comm, is_collective, root_then_bcast
from lensing_ssc.processing.interrupts import install_process_handlers, pending_stop

log = logging.getLogger("lensing_ssc")

STAGES = ("mock", "preprocess", "kappa", "analyze", "plot")
PIPELINES = {"mock": "MockPipeline", "preprocess": "PreprocessingPipeline", "kappa": "KappaPipeline",
             "analyze": "AnalysisPipeline", "ensemble": "EnsemblePipeline"}


class UsageError(LensingSSCError):
    """A bad command-line argument (exit code 2, like a bad config key)."""

    exit_code = EXIT_BAD_INPUT


def setup_logging(level: str, rank: int) -> None:
    """Rank 0 logs at ``level``; other ranks only warnings and errors, each line tagged with the rank."""
    logging.basicConfig(
        level=getattr(logging, level) if rank == 0 else max(getattr(logging, level), logging.WARNING),
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    logging.getLogger("healpy").setLevel(logging.WARNING)  # it logs every FITS header it reads


def load_config(path: str, args) -> ProcessingConfig:
    """Rank 0 reads and validates the config; every rank gets the same object (or the same error)."""
    config = root_then_bcast(get_comm(), lambda: ProcessingConfig.from_yaml(path))
    if getattr(args, "restart", False):
        config.pipeline.resume = "restart"
    return config


def _pipeline_for(stage: str):
    from lensing_ssc.processing import pipeline as pipelines
    return getattr(pipelines, PIPELINES[stage])


def _plot_outputs(config: ProcessingConfig) -> List[str]:
    """Rank 0: the plots of every results file of the run (``{output_dir}/plots``)."""
    from lensing_ssc.plots import plot_stats_files
    output = Path(config.output_dir)
    stats = sorted((output / "stats").glob("stats_zs*_s*_oa*.h5"))
    validation = output / "kappa" / "validation.json"
    return [str(p) for p in plot_stats_files(stats, output / "plots", kappa_dir=output / "kappa",
                                             validation_json=validation if validation.exists() else None)]


def _run_stages(config: ProcessingConfig, stages: List[str]) -> int:
    comm = get_comm()
    rows = []
    for stage in stages:
        if comm.any(pending_stop() is not None):  # a signal between stages: nothing to checkpoint
            if comm.is_root:
                print(f"lensing-ssc: stopped before stage {stage} ({pending_stop() or 'a stop on another rank'}); "
                      "rerun the same command to resume", file=sys.stderr)
            return EXIT_CHECKPOINTED
        began = time.monotonic()
        if stage == "plot":
            outputs = root_then_bcast(comm, lambda: _plot_outputs(config))
            rows.append((stage, time.monotonic() - began, 0, 0, 0.0, len(outputs)))
            continue
        result = _pipeline_for(stage)(config).execute()
        if result.status == "checkpointed":
            if comm.is_root:
                print(f"lensing-ssc: {result.message}", file=sys.stderr)
            return EXIT_CHECKPOINTED
        rows.append((stage, time.monotonic() - began, result.tasks_done, result.tasks_skipped,
                     comm.max(result.peak_memory_mb), len(result.outputs)))
        if comm.is_root:
            log.info("%s: done; outputs: %s", stage,
                     ", ".join(result.outputs[:4]) + (f" ... ({len(result.outputs)} files)" if len(result.outputs) > 4 else ""))
    if comm.is_root:
        lines = [f"{'stage':<11} {'wall_s':>8} {'tasks':>7} {'skipped':>8} {'peak_MB/rank':>13} {'outputs':>8}"]
        lines += [f"{s:<11} {t:>8.1f} {d:>7d} {k:>8d} {m:>13.0f} {o:>8d}" for s, t, d, k, m, o in rows]
        print("\n".join(lines), file=sys.stderr)
        output = Path(config.output_dir).resolve()
        where = {"mass sheets": "mass_sheets", "kappa maps": "kappa", "statistics": "stats", "plots": "plots"}
        found = [f"{label}: {output / sub}" for label, sub in where.items() if (output / sub).exists()]
        print("lensing-ssc: done. " + "; ".join(found or [f"outputs under {output}"]), file=sys.stderr)
    return EXIT_OK


def cmd_stage(args) -> int:
    config = load_config(args.config, args)
    if args.command == "mock":  # asked for explicitly: write it whatever mock.enabled says
        config.mock.enabled = True
    return _run_stages(config, [args.command])


def cmd_run(args) -> int:
    config = load_config(args.config, args)
    if args.stages:
        stages = args.stages.split(",")
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise UsageError(f"--stages: unknown stage(s) {', '.join(unknown)}; "
                             f"expected some of {', '.join(STAGES)}")
    else:
        stages = [s for s in STAGES if s != "mock" or config.mock.enabled]
    if {"preprocess", "kappa"} <= set(stages) and "mock" not in stages and config.data_dir:
        # Before the preprocessing's hours, not after: the light cone must reach every source redshift
        # (a light cone the mock stage is about to write is checked by the kappa stage, from its sheets).
        root_then_bcast(get_comm(), lambda: _validate_inputs(config))
    return _run_stages(config, stages)


def _validate_inputs(config: ProcessingConfig) -> List[str]:
    """Rank 0: check the inputs that exist now (the usmesh, unless the mock will write it), and that the
    light cone reaches every source redshift."""
    from lensing_ssc.processing.steps.kappa_steps import check_source_reach
    from lensing_ssc.processing.steps.preprocessing_steps import build_plan
    if config.mock.enabled and not Path(config.data_dir or "").exists():
        return [f"data_dir {config.data_dir}: the mock stage will write it"]
    plan = build_plan(config)  # raises InputError naming the file or key
    check_source_reach(config.kappa.source_redshifts, max(sheet.z_far for sheet in plan.sheets),
                       f"the light cone {plan.usmesh}")
    return [f"data_dir {plan.usmesh}: {len(plan.sheets)} sheets ({plan.sheets[0].index}-{plan.sheets[-1].index}) "
            f"at nside {plan.nside}, dataset {plan.dataset}, seed {plan.seed}"]


def cmd_validate(args) -> int:
    config = load_config(args.config, args)
    notes = root_then_bcast(get_comm(), lambda: _validate_inputs(config) if config.data_dir else [])
    if get_comm().is_root:
        print("\n".join([f"{args.config}: configuration is valid"] + notes))
    return EXIT_OK


def cmd_plan(args) -> int:
    from lensing_ssc.processing.planning import format_plan
    config = load_config(args.config, args)
    if get_comm().is_root:
        print(format_plan(config))
    return EXIT_OK


def cmd_status(args) -> int:
    from lensing_ssc.processing.planning import format_plan
    config = load_config(args.config, args)
    if get_comm().is_root:
        print(format_plan(config, with_checkpoints=True))
    return EXIT_OK


def cmd_plot(args) -> int:
    from lensing_ssc.plots import plot_stats_files
    stats = Path(args.stats)
    if not stats.is_file():
        raise InputError(f"{stats}: results file not found")
    output = Path(args.output or stats.parent.parent / "plots")

    def plot():
        kappa_dir = stats.parent.parent / "kappa"
        validation = kappa_dir / "validation.json"
        return plot_stats_files([stats], output, kappa_dir=kappa_dir if kappa_dir.exists() else None,
                                validation_json=validation if validation.exists() else None)

    written = root_then_bcast(get_comm(), plot)
    if get_comm().is_root:
        print("\n".join(str(p) for p in written))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lensing-ssc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lensing_ssc {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable, help_text: str, stage: bool = False):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("config", help="YAML configuration file")
        if stage:
            command.add_argument("--restart", action="store_true",
                                 help="discard this config's checkpoints and outputs' up-to-date marks; start afresh")
            command.add_argument("--resume", action="store_true", help="resume from checkpoints (the default)")
        command.set_defaults(func=func)
        return command

    run = add("run", cmd_run, "run mock (if mock.enabled) -> preprocess -> kappa -> analyze -> plot", stage=True)
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    add("mock", cmd_stage, "write the mock usmesh light cone named by data_dir", stage=True)
    add("preprocess", cmd_stage, "usmesh light cone -> mass_sheets/delta-sheet-NN.fits", stage=True)
    add("kappa", cmd_stage, "delta sheets -> kappa/kappa_zs{zs}_s{seed}.fits (Born approximation)", stage=True)
    add("analyze", cmd_stage, "kappa maps -> stats/stats_zs{zs}_s{seed}_oa{S}.h5", stage=True)
    add("ensemble", cmd_stage, "pool results files of simulation families: covariances, SSC variance ratios",
        stage=True)
    add("validate", cmd_validate, "check the config and the usmesh input, write nothing")
    add("plan", cmd_plan, "dry run: tasks per stage, what is done, memory estimate per rank")
    add("status", cmd_status, "progress of each stage from its outputs and checkpoints")
    plot = sub.add_parser("plot", help="PNG plots of a results file")
    plot.add_argument("stats", help="a stats_zs{zs}_s{seed}_oa{S}.h5 results file")
    plot.add_argument("-o", "--output", help="output directory (default: ../plots next to the file)")
    plot.set_defaults(func=cmd_plot)
    return parser


def describe_unexpected(exc: Exception) -> str:
    """One line for an exception that is not a LensingSSCError: a full disk names the file when the
    error knows it (``exc.filename``); others give their type and message (newlines folded)."""
    if is_disk_full(exc) and exc.filename:
        return str(disk_full_error(exc.filename, exc))
    return f"{type(exc).__name__}: {' '.join(str(exc).split())} (rerun with --log-level DEBUG for the traceback)"


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    comm = get_comm()
    setup_logging(args.log_level, comm.rank)
    install_process_handlers()
    try:
        with abort_on_exception(comm, exit_code_for):
            return args.func(args)
    except LensingSSCError as exc:
        if comm.is_root or not getattr(exc, "collective", False):
            print(f"lensing-ssc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # one line for the user; the traceback at debug level
        log.debug("traceback", exc_info=True)
        if comm.is_root or not is_collective(exc):  # an error all ranks share is printed once
            print(f"lensing-ssc: error: {describe_unexpected(exc)}", file=sys.stderr)
        return exit_code_for(exc)


def entry_point() -> None:
    sys.exit(main())
