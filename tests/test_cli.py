"""The lensing-ssc command line: help, version, validate, run --stages, and one message under mpiexec."""
import pytest
import yaml

from conftest import REPO, run_cli
from lensing_ssc import __version__
from lensing_ssc.cli import main

SEED_YAML = REPO / "configs" / "processing.yaml"


def test_help_lists_the_subcommands():
    done = run_cli(["--help"])
    assert done.returncode == 0, done.stderr
    for command in ("run", "mock", "preprocess", "kappa", "analyze", "validate"):
        assert command in done.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"lensing_ssc {__version__}"


def test_missing_config_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["validate"])
    assert caught.value.code == 2
    assert "config" in capsys.readouterr().err


def test_validate_accepts_the_seed_config():
    done = run_cli(["validate", SEED_YAML])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{SEED_YAML}: configuration is valid"


def test_run_with_unknown_stage_fails_before_running_anything(tmp_path):
    done = run_cli(["run", SEED_YAML, "--stages", "preprocess,bogus,nope"], cwd=tmp_path)
    assert done.returncode == 2  # DESIGN.md §3: bad input
    lines = done.stderr.strip().splitlines()
    assert lines == ["lensing-ssc: error: --stages: unknown stage(s) bogus, nope; "
                     "expected some of mock, preprocess, kappa, analyze, plot"]
    assert list(tmp_path.iterdir()) == []  # no output directory, no checkpoints


def test_bad_config_under_mpi_fails_with_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  batch_size: 0\n")
    done = run_cli(["validate", bad], nranks=2)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("lensing-ssc: error:") == 1, done.stderr
    assert f"{bad}: config error: pipeline.batch_size: expected an integer >= 1, got 0" in done.stderr


def test_valid_config_under_mpi_is_validated_once():
    """Rank 0 reads the config and broadcasts the ProcessingConfig object."""
    done = run_cli(["validate", SEED_YAML], nranks=2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("configuration is valid") == 1


def test_an_error_every_rank_shares_is_printed_once(tmp_path):
    """A collective error that is not a LensingSSCError (here /dev/shm too small for the node-shared map)."""
    import yaml
    from conftest import run_python, write_gaussian_kappa
    write_gaussian_kappa(tmp_path / "kappa", nside=16)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "analysis": {
        "xsize": 32, "centers": [[60.0, 30.0], [120.0, 200.0]], "smoothing_lengths": [10.0], "ngal": [0]}}))
    driver = ("import sys\nfrom lensing_ssc.parallel import shared\nfrom lensing_ssc.cli import main\n"
              "shared._shm_shortage = lambda nbytes, what: MemoryError(f'{what}: no room (test)')\n"
              "sys.exit(main(['analyze', sys.argv[1]]))\n")
    done = run_python(["-c", driver, config], nranks=2)
    assert done.returncode == 3, done.stderr  # DESIGN.md §3: resources
    assert done.stderr.count("lensing-ssc: error: MemoryError:") == 1, done.stderr
    assert "no room (test)" in done.stderr


def test_validate_and_run_refuse_a_source_beyond_the_light_cone(tmp_path):
    """Before any sheet exists: the light cone's farthest shell (z = 0.316 for z_max = 0.3) bounds the sources."""
    from lensing_ssc.mock.lightcone import write_mock_lightcone

    usmesh = tmp_path / "usmesh"
    write_mock_lightcone(usmesh, nside=8, box_size=200.0, nc=16, z_max=0.3, seed=3)
    config = tmp_path / "run.yaml"
    for sources, exit_code in (([0.2, 1.0], 2), ([0.2, 0.3], 0)):
        config.write_text(yaml.safe_dump({"data_dir": str(usmesh), "output_dir": str(tmp_path / "out"),
                                          "kappa": {"source_redshifts": sources}}))
        done = run_cli(["validate", config])
        assert done.returncode == exit_code, done.stderr
        if exit_code:
            assert "kappa.source_redshifts: zs = 1.0 lies beyond the light cone" in done.stderr
            assert "ends at z = 0.3158" in done.stderr and "zs = 0.2" not in done.stderr
            refused = run_cli(["run", config])  # before any sheet is made
            assert refused.returncode == 2 and "zs = 1.0 lies beyond the light cone" in refused.stderr
            assert not (tmp_path / "out" / "mass_sheets").exists()
    config.write_text(config.read_text().replace("- 0.3", "- 1.0"))
    preprocessed = run_cli(["run", config, "--stages", "preprocess"])  # kappa not asked for: no check
    assert preprocessed.returncode == 0, preprocessed.stderr
