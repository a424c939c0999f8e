"""Shared test helpers: launching the CLI or a script on 1..n ranks in a clean MPI environment."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"


def mpi_environment():
    """The current environment without the MPI variables of this (possibly singleton-MPI) process,
    so a child ``mpiexec`` starts a fresh job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1")
    return env


def launch_command(args, nranks=1):
    """argv running ``python args...`` on ``nranks`` ranks (plain python for one rank)."""
    python = [sys.executable] + [str(a) for a in args]
    if nranks == 1:
        return python
    return ["mpiexec", "-n", str(nranks)] + python


def run_python(args, nranks=1, timeout=120, cwd=None):
    """Run ``python args...`` on ``nranks`` ranks; returns CompletedProcess (text output)."""
    return subprocess.run(launch_command(args, nranks), env=mpi_environment(), cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def run_cli(args, nranks=1, timeout=120, cwd=None):
    return run_python(["-m", "lensing_ssc"] + list(args), nranks=nranks, timeout=timeout, cwd=cwd)


@pytest.fixture
def cli():
    return run_cli
