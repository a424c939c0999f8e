"""Issue 5's acceptance figure on the mock light cone: at nside 128 the kappa map's C_ell agrees with the
Limber prediction through the same shells (plus shot noise and pixel window) within 10%, averaged over
30 <= ell <= nside, for zs = 1.0; the figure is what `lensing-ssc kappa` logs and writes to
kappa/validation.json. Also the averaging itself (`mean_cl_ratio`)."""
import json

import numpy as np

from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.mock.lightcone import write_mock_lightcone
from lensing_ssc.processing.pipeline.kappa import KappaPipeline
from lensing_ssc.processing.pipeline.preprocessing import PreprocessingPipeline
from lensing_ssc.processing.steps.kappa_steps import mean_cl_ratio

# configs/demo.yaml's mock: nside 128, a 500 Mpc/h box on a 64^3 grid, z < 1.5 (sheets 40-99)
DEMO_MOCK = {"nside": 128, "box_size": 500.0, "nc": 64, "z_max": 1.5, "nslices": 100, "seed": 100,
             "field": "lognormal", "particles_per_cell": 0.125, "nevents": 2}


def test_mean_cl_ratio_counts_each_ell_once_over_the_closed_range():
    predicted = np.ones(10)
    measured = np.arange(10.0)
    assert mean_cl_ratio(measured, predicted, 3, 5) == 4.0  # ell 3, 4, 5
    assert mean_cl_ratio(measured, 2 * predicted, 8, 20) == 4.25  # clipped to ell <= 9: (8 + 9) / 4
    assert mean_cl_ratio(measured, predicted, 30, 16) is None


def test_mock_kappa_cl_agrees_with_limber_within_ten_percent(tmp_path):
    usmesh = tmp_path / "usmesh"
    write_mock_lightcone(usmesh, **DEMO_MOCK)
    config = ProcessingConfig(data_dir=str(usmesh), output_dir=str(tmp_path / "out"),
                              preprocessing={"sheet_range": [0, 100]},
                              kappa={"source_redshifts": [0.5, 1.0, 1.5]},
                              pipeline={"memory_monitoring": False})
    assert PreprocessingPipeline(config).execute().success
    assert KappaPipeline(config).execute().success
    report = json.loads((tmp_path / "out" / "kappa" / "validation.json").read_text())
    assert report["status"] == "ok" and report["nside"] == 128
    figures = {zs: check["mean_ratio"] for zs, check in report["maps"].items()}
    assert report["maps"]["1.0"]["mean_ratio_ell"] == [30, 128]
    assert abs(figures["1.0"] - 1.0) < 0.10, figures
    assert all(abs(figure - 1.0) < 0.15 for figure in figures.values()), figures
