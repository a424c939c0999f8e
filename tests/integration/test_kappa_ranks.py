"""The kappa stage under MPI: same bytes on 1, 2 and 3 ranks, SIGKILL on 2 ranks then resume on one,
a bad input ends every rank with exit code 2, and an in-process 2-rank run (pytest-mpi)."""
import healpy as hp
import numpy as np
import pytest
import yaml

from conftest import run_python
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.cosmology import make_cosmology
from lensing_ssc.io.healpix_maps import read_nested_map, write_nested_map
from lensing_ssc.processing.pipeline.kappa import KappaPipeline
from lensing_ssc.science.born import born_weights

NSIDE = 16
SHEETS = np.arange(45, 65)
SOURCES = (1.0, 1.2)  # both within the sheets' reach (z = 1.22 for sheet 45)

# `lensing-ssc kappa CONFIG` with KappaPipeline registered where the CLI looks for it (harmless once
# lensing_ssc.processing.pipeline exports it). An optional second argument N makes the process SIGKILL
# itself at its N-th sheet read on rank 1, mid-task.
DRIVER = """
import os, signal, sys
import lensing_ssc.processing.pipeline as pipelines
from lensing_ssc.processing.pipeline.kappa import KappaPipeline
from lensing_ssc.processing.steps import kappa_steps
from lensing_ssc.parallel import get_comm
from lensing_ssc.cli import main
pipelines.KappaPipeline = KappaPipeline
if len(sys.argv) > 2:
    kill_at, original, reads = int(sys.argv[2]), kappa_steps.MapRangeReader.read_into, []
    def read_then_die(*args, **kwargs):
        reads.append(1)
        if get_comm().rank == 1 and len(reads) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    kappa_steps.MapRangeReader.read_into = read_then_die
sys.exit(main(["kappa", sys.argv[1]]))
"""


def sheet_fields(seed=11):
    """Lognormal-like overdensities (>= -1), float32, one per sheet."""
    rng = np.random.default_rng(seed)
    return {int(i): (np.exp(rng.normal(0, 0.4, 12 * NSIDE**2)) / np.exp(0.08) - 1).astype(np.float32)
            for i in SHEETS}


def write_inputs(output_dir, fields, drop_key=None):
    for i, delta in fields.items():
        cards = [("SHEET", i, ""), ("A_FAR", 0.01 * i, ""), ("A_NEAR", 0.01 * (i + 1), ""), ("SEED", 42, "")]
        cards = [card for card in cards if not (card[0] == drop_key and i == SHEETS[3])]
        write_nested_map(output_dir / "mass_sheets" / f"delta-sheet-{i:02d}.fits", delta, cards)
    config = output_dir / "kappa.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(output_dir), "kappa": {"source_redshifts": list(SOURCES)},
                                      "pipeline": {"memory_monitoring": False}}))
    return config


def reference_maps(fields):
    """Independent Born sum: whole maps read with healpy, float64 in ascending sheet order, then float32."""
    cosmo = make_cosmology()
    maps = {}
    for zs in SOURCES:
        weights = born_weights(cosmo, 0.01 * SHEETS, 0.01 * (SHEETS + 1), zs)
        total = np.zeros(12 * NSIDE**2)
        for i, w in zip(SHEETS, weights):
            total += w * fields[int(i)].astype(np.float64)
        maps[zs] = total.astype(np.float32)
    return maps


def kappa_files(output_dir):
    return {zs: output_dir / "kappa" / f"kappa_zs{zs}_s42.fits" for zs in SOURCES}


def test_one_two_three_ranks_give_byte_identical_maps(tmp_path):
    fields = sheet_fields()
    expected = reference_maps(fields)
    contents = []
    for nranks in (1, 2, 3):
        config = write_inputs(tmp_path / f"ranks{nranks}", fields)
        done = run_python(["-c", DRIVER, config], nranks=nranks)
        assert done.returncode == 0, done.stderr
        files = kappa_files(tmp_path / f"ranks{nranks}")
        contents.append({zs: path.read_bytes() for zs, path in files.items()})
        for zs, path in files.items():
            values, header = read_nested_map(path, dtype=np.float32)
            assert header["ORDERING"] == "NESTED"
            np.testing.assert_array_equal(values, expected[zs])
    assert contents[0] == contents[1] == contents[2]


def test_sigkill_mid_task_on_two_ranks_then_resume_on_one(tmp_path):
    fields = sheet_fields()
    config = write_inputs(tmp_path, fields)
    killed = run_python(["-c", DRIVER, config, 2 * len(SHEETS) + 5], nranks=2)
    assert killed.returncode != 0
    assert not any(path.exists() for path in kappa_files(tmp_path).values())
    resumed = KappaPipeline(ProcessingConfig.from_yaml(config)).execute()  # in this process: one rank
    assert resumed.success and resumed.tasks_skipped >= 2  # at least rank 1's two finished tasks
    assert resumed.tasks_skipped + resumed.tasks_done == 12
    for zs, path in kappa_files(tmp_path).items():
        np.testing.assert_array_equal(read_nested_map(path, dtype=np.float32)[0], reference_maps(fields)[zs])


def test_missing_header_key_exits_2_on_every_rank(tmp_path):
    config = write_inputs(tmp_path, sheet_fields(), drop_key="A_NEAR")
    failed = run_python(["-c", DRIVER, config], nranks=2)
    assert failed.returncode == 2, failed.stderr
    assert f"delta-sheet-{SHEETS[3]}.fits" in failed.stderr and "A_NEAR" in failed.stderr


def test_source_beyond_the_last_sheet_exits_2_on_every_rank_and_writes_nothing(tmp_path):
    config = write_inputs(tmp_path, sheet_fields())  # sheets 45..64 reach z = 1.22
    config.write_text(config.read_text().replace("- 1.2\n", "- 1.5\n"))
    failed = run_python(["-c", DRIVER, config], nranks=2)
    assert failed.returncode == 2, failed.stderr
    assert "kappa.source_redshifts: zs = 1.5 lies beyond the mass sheets in" in failed.stderr
    assert not (tmp_path / "kappa").exists() or not any((tmp_path / "kappa").iterdir())


@pytest.mark.mpi(min_size=2)
def test_in_process_run_under_mpi_matches_reference(mpi_tmp_path):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    fields = sheet_fields(seed=12)
    if comm.rank == 0:
        write_inputs(mpi_tmp_path, fields)
    comm.Barrier()
    config = ProcessingConfig(output_dir=str(mpi_tmp_path), kappa={"source_redshifts": list(SOURCES)},
                              pipeline={"memory_monitoring": False})
    result = KappaPipeline(config).execute()
    assert result.success and result.tasks_done == 12
    if comm.rank == 0:
        for zs, path in kappa_files(mpi_tmp_path).items():
            values, header = read_nested_map(path, dtype=np.float32)
            np.testing.assert_array_equal(values, reference_maps(fields)[zs])
            assert hp.npix2nside(values.size) == NSIDE and header["SEED"] == 42
