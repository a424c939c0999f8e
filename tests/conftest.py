"""Shared test helpers: launching the CLI or a script on 1..n ranks in a clean MPI environment."""
import os
import subprocess
import sys
from pathlib import Path

import healpy as hp
import numpy as np
import pytest

from lensing_ssc.io.healpix_maps import write_nested_map

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


def kappa_cl(lmax):
    """A smooth, realistic-amplitude convergence spectrum: ell(ell+1)C/2pi = 1e-4 (ell/1000)^0.5."""
    ell = np.arange(lmax + 1, dtype=float)
    cl = np.zeros_like(ell)
    cl[2:] = 2 * np.pi * 1e-4 * (ell[2:] / 1000.0) ** 0.5 / (ell[2:] * (ell[2:] + 1))
    return cl


def write_gaussian_kappa(directory, nside=128, zs=1.0, seed=7, random_seed=1):
    """A NESTED Gaussian random kappa map kappa_zs{zs}_s{seed}.fits with spectrum kappa_cl."""
    np.random.seed(random_seed)
    ring = hp.synfast(kappa_cl(3 * nside - 1), nside)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"kappa_zs{zs}_s{seed}.fits"
    write_nested_map(path, hp.reorder(ring, r2n=True), [("ZS", zs, "source redshift")])
    return path


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """tests/reliability: the tiny chain (reliability/chain.py) run once per session, uninterrupted, on one
    rank with the plain CLI; every fault and invariance test compares its outputs with this run."""
    from chain import CHAIN_STAGES, TinyChain, write_chain_config  # tests/reliability is on sys.path there
    from job_control import run_job

    directory = tmp_path_factory.mktemp("tiny_chain_reference")
    config = write_chain_config(directory, directory / "usmesh", mock_enabled=True)
    done = run_job(["-m", "lensing_ssc", "run", config, "--stages", CHAIN_STAGES], 1, directory / "logs", timeout=180)
    assert done.returncode == 0, done.stderr
    return TinyChain(directory)
