"""The preprocess and mock stages under MPI: byte-identical sheets on 1, 2 and 3 ranks, SIGKILL mid-run
then resume with identical bytes, bad input -> exit code 2 on every rank, `run --stages mock,preprocess`
through the CLI on 2 ranks, and an in-process 2-rank run (pytest-mpi)."""
import json

import numpy as np
import pytest
import yaml

from conftest import run_python
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.io.healpix_maps import read_header
from lensing_ssc.mock.lightcone import write_mock_lightcone
from lensing_ssc.processing.pipeline.mock import MockPipeline
from lensing_ssc.processing.pipeline.preprocessing import PreprocessingPipeline

MOCK = {"nside": 32, "box_size": 200.0, "nc": 16, "z_max": 0.3, "seed": 9, "particles_per_cell": 0.125,
        "nevents": 2}

# `python -c DRIVER KILL_AT cli-args...`: the CLI with the two pipelines registered where it looks for them
# (harmless once lensing_ssc.processing.pipeline exports them). KILL_AT > 0 makes rank 1 SIGKILL itself
# just before its KILL_AT-th sheet write.
DRIVER = """
import os, signal, sys
import lensing_ssc.processing.pipeline as pipelines
from lensing_ssc.processing.pipeline.mock import MockPipeline
from lensing_ssc.processing.pipeline.preprocessing import PreprocessingPipeline
from lensing_ssc.processing.steps import preprocessing_steps
from lensing_ssc.parallel import get_comm
from lensing_ssc.cli import main
pipelines.MockPipeline, pipelines.PreprocessingPipeline = MockPipeline, PreprocessingPipeline
kill_at = int(sys.argv[1])
if kill_at:
    original, writes = preprocessing_steps.write_nested_map_blocks, []
    def write_then_die(*args, **kwargs):
        writes.append(1)
        if get_comm().rank == 1 and len(writes) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    preprocessing_steps.write_nested_map_blocks = write_then_die
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def usmesh(tmp_path_factory):
    path = tmp_path_factory.mktemp("mock") / "usmesh"
    write_mock_lightcone(path, **MOCK)
    return path


def write_config(output_dir, data_dir, **sections):
    output_dir.mkdir(parents=True, exist_ok=True)
    config = {"data_dir": str(data_dir), "output_dir": str(output_dir),
              "preprocessing": {"sheet_range": [0, 100], "chunk_size": 2000},
              "pipeline": {"memory_monitoring": False}, **sections}
    path = output_dir / "preprocess.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sheet_bytes(output_dir):
    return {p.name: p.read_bytes() for p in sorted((output_dir / "mass_sheets").glob("delta-sheet-*.fits"))}


def test_one_two_three_ranks_give_byte_identical_sheets(usmesh, tmp_path):
    contents = []
    for nranks in (1, 2, 3):
        output_dir = tmp_path / f"ranks{nranks}"
        done = run_python(["-c", DRIVER, 0, "preprocess", write_config(output_dir, usmesh)], nranks=nranks)
        assert done.returncode == 0, done.stderr
        contents.append(sheet_bytes(output_dir))
        manifest = json.loads((output_dir / "mass_sheets" / "manifest.json").read_text())
        assert manifest["n_ranks"] == nranks and len(manifest["sheets"]) == len(contents[-1])
    assert len(contents[0]) > 3 and contents[0] == contents[1] == contents[2]


def test_sigkill_mid_run_then_resume_gives_identical_bytes(usmesh, tmp_path):
    reference = tmp_path / "reference"
    assert PreprocessingPipeline(ProcessingConfig.from_yaml(write_config(reference, usmesh))).execute().success
    config = write_config(tmp_path / "killed", usmesh)
    killed = run_python(["-c", DRIVER, 3, "preprocess", config], nranks=2)
    assert killed.returncode != 0
    assert not (tmp_path / "killed" / "mass_sheets" / "manifest.json").exists()
    assert len(sheet_bytes(tmp_path / "killed")) < len(sheet_bytes(reference))
    resumed = PreprocessingPipeline(ProcessingConfig.from_yaml(config)).execute()  # in this process: one rank
    assert resumed.success and resumed.tasks_skipped >= 2  # at least rank 1's two checkpointed sheets
    assert sheet_bytes(tmp_path / "killed") == sheet_bytes(reference)
    assert not list((tmp_path / "killed").rglob("*.inprogress"))


def test_bad_input_exits_2_on_every_rank(tmp_path):
    missing = tmp_path / "nowhere" / "usmesh"
    failed = run_python(["-c", DRIVER, 0, "preprocess", write_config(tmp_path, missing)], nranks=2)
    assert failed.returncode == 2, failed.stderr
    assert f"{missing}: usmesh directory not found" in failed.stderr
    assert "fatal" not in failed.stderr  # a clean collective error, not an abort
    assert not (tmp_path / "mass_sheets").exists()


def test_cli_runs_mock_then_preprocess_on_two_ranks(tmp_path):
    tiny = {"enabled": True, "nside": 16, "box_size": 200.0, "nc": 16, "z_max": 0.2, "seed": 11}
    config = write_config(tmp_path, tmp_path / "usmesh", mock=tiny)
    first = run_python(["-c", DRIVER, 0, "run", config, "--stages", "mock,preprocess"], nranks=2)
    assert first.returncode == 0, first.stderr
    sheets = sheet_bytes(tmp_path)
    header = read_header(tmp_path / "mass_sheets" / sorted(sheets)[0])
    assert header["MOCK"] is True and header["SEED"] == 11 and header["NSIDE"] == 16
    assert "mock: wrote" in first.stderr and "preprocess: wrote" in first.stderr

@pytest.mark.mpi(min_size=2)
def test_in_process_mock_and_preprocess_under_mpi(mpi_tmp_path):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    config = ProcessingConfig(data_dir=str(mpi_tmp_path / "usmesh"), output_dir=str(mpi_tmp_path),
                              mock={"enabled": True, **MOCK}, preprocessing={"sheet_range": [0, 100]},
                              pipeline={"memory_monitoring": False})
    assert MockPipeline(config).execute().success
    result = PreprocessingPipeline(config).execute()
    assert result.success and result.tasks_done > 3
    if comm.rank == 0:
        manifest = json.loads((mpi_tmp_path / "mass_sheets" / "manifest.json").read_text())
        qc = json.loads((mpi_tmp_path / "mass_sheets" / "qc.json").read_text())
        assert manifest["n_ranks"] == comm.size and qc["checks"]["conservation"]
        rows = sum(s["rows"] for s in manifest["sheets"])
        assert rows == manifest["input"]["nrows"]  # every row of the mock landed in a sheet
        masses = np.array([s["mass"] for s in manifest["sheets"]])
        assert masses.sum() == pytest.approx(qc["totals"]["mass_from_sheets"], rel=1e-6)
