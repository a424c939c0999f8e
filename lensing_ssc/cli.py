"""The ``lensing-ssc`` command line (DESIGN.md §3). Same commands on one rank and under mpiexec/srun.

Exit codes: 0 success, 2 bad config or input, 3 resource error, 75 checkpointed (rerun to resume),
1 anything else. Under MPI every rank exits with the same code; an unexpected exception on one rank
aborts the whole job.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Dict, List, Optional

from lensing_ssc import __version__
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import EXIT_CHECKPOINTED, EXIT_OK, LensingSSCError, exit_code_for
from lensing_ssc.parallel import abort_on_exception, get_comm, root_then_bcast

log = logging.getLogger("lensing_ssc")

STAGES = ("mock", "preprocess", "kappa", "analyze", "plot")


def setup_logging(level: str, rank: int) -> None:
    """Rank 0 logs at ``level``; other ranks only warnings and errors, each line tagged with the rank."""
    logging.basicConfig(
        level=getattr(logging, level) if rank == 0 else max(getattr(logging, level), logging.WARNING),
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    logging.getLogger("healpy").setLevel(logging.WARNING)  # it logs every FITS header it reads


def load_config(path: str, args) -> ProcessingConfig:
    """Rank 0 reads and validates the config; every rank gets the same object (or the same error)."""
    comm = get_comm()
    config = root_then_bcast(comm, lambda: ProcessingConfig.from_yaml(path))
    if getattr(args, "restart", False):
        config.pipeline.resume = "restart"
    return config


def _pipeline_for(stage: str):
    from lensing_ssc.processing import pipeline as pipelines
    classes = {"mock": "MockPipeline", "preprocess": "PreprocessingPipeline", "kappa": "KappaPipeline",
               "analyze": "AnalysisPipeline"}
    cls = getattr(pipelines, classes[stage], None)
    if cls is None:
        raise LensingSSCError(f"stage '{stage}' is not available in lensing_ssc {__version__}")
    return cls


def _run_stages(config: ProcessingConfig, stages: List[str]) -> int:
    for stage in stages:
        result = _pipeline_for(stage)(config).execute()
        if result.status == "checkpointed":
            if get_comm().is_root:
                print(f"lensing-ssc: {result.message}", file=sys.stderr)
            return EXIT_CHECKPOINTED
        if get_comm().is_root:
            log.info("%s: done (%d tasks run, %d skipped, %d retried; peak %.0f MB); outputs: %s", stage,
                     result.tasks_done, result.tasks_skipped, result.tasks_retried, result.peak_memory_mb,
                     ", ".join(result.outputs[:5]) + (" ..." if len(result.outputs) > 5 else ""))
    return EXIT_OK


def cmd_stage(args) -> int:
    return _run_stages(load_config(args.config, args), [args.command])


def cmd_run(args) -> int:
    config = load_config(args.config, args)
    stages = args.stages.split(",") if args.stages else [s for s in STAGES if s != "plot"]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise LensingSSCError(f"--stages: unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(STAGES)}")
    return _run_stages(config, stages)


def cmd_validate(args) -> int:
    config = load_config(args.config, args)
    if get_comm().is_root:
        print(f"{args.config}: configuration is valid")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lensing-ssc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lensing_ssc {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable, help_text: str, config_arg: bool = True):
        command = sub.add_parser(name, help=help_text)
        if config_arg:
            command.add_argument("config", help="YAML configuration file")
            command.add_argument("--restart", action="store_true",
                                 help="discard this config's checkpoints and start the stage(s) afresh")
            command.add_argument("--resume", action="store_true", help="resume from checkpoints (default)")
        command.set_defaults(func=func)
        return command

    run = add("run", cmd_run, "run mock (if configured) -> preprocess -> kappa -> analyze -> plot")
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    add("mock", cmd_stage, "write the mock usmesh light cone named by data_dir")
    add("preprocess", cmd_stage, "usmesh light cone -> delta-sheet-NN.fits")
    add("kappa", cmd_stage, "delta sheets -> kappa_zs{zs}_s{seed}.fits (Born approximation)")
    add("analyze", cmd_stage, "kappa maps -> stats_zs{zs}_s{seed}_oa{S}.h5")
    add("validate", cmd_validate, "check the config (and inputs) only")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    comm = get_comm()
    setup_logging(args.log_level, comm.rank)
    try:
        with abort_on_exception(comm, exit_code_for):
            return args.func(args)
    except LensingSSCError as exc:
        if comm.is_root or not getattr(exc, "collective", False):
            print(f"lensing-ssc: error: {exc}", file=sys.stderr)
        return exc.exit_code


def entry_point() -> None:
    sys.exit(main())
