"""The ensemble stage's SSC theory overlay (ensemble.theory) on the reduced original files of
tests/data/original_ensemble: the CLI writes /theory and the plot; without pyccl one log line and no
/theory; off by default."""
import logging
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

from conftest import REPO, TEST_DATA, run_cli
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.processing.pipeline.ensemble import EnsemblePipeline

ORIGINAL = TEST_DATA / "original_ensemble"
CL = "power_spectra/ngal_0/cl"
FAMILIES = {name: [str(ORIGINAL / name / "stats_zs*_s*_oa10.h5")] for name in ("bigbox", "tiled")}


def tiled_cl_variance(ell):
    """Var of C_l over the tiled patches (patch 132 left out), read here with h5py, in C_l^2 units."""
    rows = []
    for file in sorted((ORIGINAL / "tiled").glob("stats_zs*_s*_oa10.h5")):
        with h5py.File(file, "r") as handle:
            rows.append(np.delete(handle[CL][()].astype(np.float64), 132, axis=0))
    band = np.concatenate(rows).var(axis=0, ddof=1)
    return band * (2 * np.pi / (ell * (ell + 1))) ** 2


def test_cli_with_theory_writes_the_prediction_and_draws_it(tmp_path):
    output = tmp_path / "out"
    config = {"output_dir": str(output), "pipeline": {"memory_monitoring": False},
              "ensemble": {"families": FAMILIES, "exclude_patches": [132], "bootstrap": 20, "theory": True,
                           "theory_box_mpc_h": 625}}
    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run_cli(["ensemble", str(path)], cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "SSC theory for power_spectra/ngal_0/cl" in done.stderr
    with h5py.File(output / "ensemble" / "ensemble_zs1.0_oa10.h5", "r") as handle:
        theory = handle["theory"]
        ell = handle["metadata/parameters/ell"][()]
        np.testing.assert_array_equal(theory["ell"][()], ell)
        assert theory.attrs["path"] == CL and theory.attrs["second"] == "tiled"
        assert theory.attrs["second_family_box_mpc_h"] == 625 and theory.attrs["zs"] == 1.0
        assert abs(theory.attrs["fsky"] / (np.radians(10.0) ** 2 / (4 * np.pi)) - 1) < 1e-12
        measured = theory["measured_variance"][()]
        np.testing.assert_allclose(measured, tiled_cl_variance(ell), rtol=1e-9)
        missing, full = theory["ssc_variance_missing"][()], theory["ssc_variance"][()]
        assert np.all((missing > 0) & (missing < full))
        predicted = theory["predicted_ratio"][()]
        np.testing.assert_allclose(predicted, 1 + missing / measured, rtol=1e-12)
        # SSC a few per cent of the tiled variance at l = 350, rising with l (SCIENCE.md §11.5 measures
        # 1.07 ... 1.12 for the variance ratio)
        assert 1.0 < predicted[0] < 1.1 and np.all(np.diff(predicted) > 0) and predicted[-1] < 1.5
        assert theory["a"].shape == theory["sigma2_b"].shape == theory["sigma2_b_missing"].shape
    png = output / "plots" / "ensemble_zs1.0_oa10_variance_ratio.png"
    assert png.stat().st_size > 10_000


def test_without_pyccl_one_log_line_and_no_theory(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pyccl", None)  # import pyccl now raises ImportError
    config = ProcessingConfig(output_dir=str(tmp_path), pipeline={"memory_monitoring": False},
                              ensemble={"families": FAMILIES, "exclude_patches": [132], "bootstrap": 0,
                                        "theory": True})
    with caplog.at_level(logging.INFO, logger="lensing_ssc.ensemble"):
        result = EnsemblePipeline(config).execute()
    assert result.success
    lines = [r for r in caplog.records if "no SSC theory" in r.getMessage()]
    assert len(lines) == 1 and "lensing_ssc[theory]" in lines[0].getMessage()
    with h5py.File(result.outputs[0], "r") as handle:
        assert "theory" not in handle and "ratios/bigbox_over_tiled" in handle
    assert any(Path(p).name.endswith("variance_ratio.png") for p in result.outputs)


def test_theory_is_off_by_default(tmp_path, caplog):
    config = ProcessingConfig(output_dir=str(tmp_path), pipeline={"memory_monitoring": False},
                              ensemble={"families": FAMILIES, "bootstrap": 0})
    assert config.ensemble.theory is False and config.ensemble.theory_box_mpc_h is None
    with caplog.at_level(logging.INFO, logger="lensing_ssc.ensemble"):
        result = EnsemblePipeline(config).execute()
    assert any("ensemble.theory: false" in r.getMessage() for r in caplog.records)
    with h5py.File(result.outputs[0], "r") as handle:
        assert "theory" not in handle
