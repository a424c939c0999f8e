"""Figures of a statistics file (lensing_ssc.plots): the PNGs written for an original file and for one of
ours (with its kappa map and a C_ell validation), skipping absent statistics, NaN rows, and the
helpers that compute what is drawn (data vector and correlation, patch summaries, Limber overlay,
footprint outlines)."""
import json
import logging
import shutil
import struct

import h5py
import healpy as hp
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from conftest import TEST_DATA, kappa_cl, write_gaussian_kappa  # noqa: E402
from lensing_ssc.core.config import ProcessingConfig  # noqa: E402
from lensing_ssc import plots  # noqa: E402
from lensing_ssc.plots import (assemble_data_vector, correlation_matrix, data_vector_blocks,  # noqa: E402
                               footprint_outline, limber_overlay, load_results, plot_results, plot_stats_files,
                               summarise_patches)
from lensing_ssc.processing.pipeline import AnalysisPipeline  # noqa: E402
from lensing_ssc.science.fibonacci import patch_footprint_vertices  # noqa: E402
from lensing_ssc.science.limber import pixel_window  # noqa: E402

ORIGINAL = TEST_DATA / "original_stats_zs1.0_s100_oa10.h5"
FIGURES = ["power_spectrum", "pdf", "peaks_minima", "minkowski", "correlation"]
ANALYSIS = {"patch_size_deg": 20.0, "xsize": 64, "ngal": [0, 30], "smoothing_lengths": [40.0, 60.0],
            "lmin": 40.0, "lmax": 200.0, "nbin": 4}


def png_size(path):
    """(width, height) from the PNG header; fails unless the file is a PNG."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def assert_figures(paths, stem, names):
    assert sorted(p.name for p in paths) == sorted(f"{stem}_{name}.png" for name in names)
    for path in paths:
        width, height = png_size(path)
        assert 500 <= width <= 2500 and 300 <= height <= 2500, (path.name, width, height)
        pixels = plt.imread(path)
        assert pixels.shape[:2] == (height, width) and pixels[..., :3].std() > 0.05, f"{path.name} looks blank"


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A results file of ours (Gaussian random kappa map, 1 rank, small patches) and a kappa
    validation.json whose prediction is the map's input spectrum times the pixel window."""
    root = tmp_path_factory.mktemp("ours")
    kappa_map = write_gaussian_kappa(root / "kappa", nside=64)
    config = {"output_dir": str(root), "pipeline": {"batch_size": 16}, "analysis": ANALYSIS}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    result = AnalysisPipeline(ProcessingConfig.from_yaml(root / "config.yaml")).execute()
    assert result.success
    edges = np.array([10, 20, 40, 80, 129])
    ell = 0.5 * (edges[:-1] + edges[1:])
    predicted = kappa_cl(128)[ell.astype(int)] * pixel_window(64, 128)[ell.astype(int)] ** 2
    validation = {"status": "ok", "nside": 64, "maps": {"1.0": {
        "ell_edges": edges.tolist(), "ell": ell.tolist(), "cl_predicted": predicted.tolist(),
        "cl_measured": (1.05 * predicted).tolist()}}}
    (root / "kappa" / "validation.json").write_text(json.dumps(validation))
    return root / "stats" / "stats_zs1.0_s7_oa20.h5", kappa_map, root / "kappa" / "validation.json"


def test_original_file_gives_every_figure_but_the_map(tmp_path):
    paths = plot_results(ORIGINAL, tmp_path / "plots")
    assert_figures(paths, ORIGINAL.stem, FIGURES)


def test_our_file_with_kappa_map_and_validation(ours, tmp_path, caplog):
    stats, kappa_map, validation = ours
    with caplog.at_level(logging.INFO, logger="lensing_ssc.plots"):
        paths = plot_results(stats, tmp_path, kappa_map_path=kappa_map, validation_json=validation)
    assert_figures(paths, stats.stem, ["kappa_map"] + FIGURES)
    assert "no Limber overlay" not in caplog.text
    assert not plt.get_fignums(), "figures left open"


def test_plot_stats_files_finds_the_matching_kappa_map(ours, tmp_path, monkeypatch):
    stats, kappa_map, validation = ours
    calls = []
    monkeypatch.setattr(plots, "plot_results", lambda *args: calls.append(args) or [])
    plot_stats_files([stats, ORIGINAL], tmp_path, kappa_dir=kappa_map.parent)
    # kappa_zs1.0_s7.fits matches zs 1.0 / seed 7 (root attributes); the original file (zs 1.0, seed 100
    # from its name) has no map there; validation.json of the kappa directory is used for both
    assert calls == [(stats, tmp_path, kappa_map, validation), (ORIGINAL, tmp_path, None, validation)]


def test_file_without_smoothed_statistics_skips_those_figures(tmp_path, caplog):
    copy = tmp_path / "stats_zs1.0_s100_oa10.h5"
    shutil.copy(ORIGINAL, copy)
    with h5py.File(copy, "r+") as handle:
        del handle["smoothed_statistics"]
        del handle["bispectra"]
    with caplog.at_level(logging.INFO, logger="lensing_ssc.plots"):
        paths = plot_results(copy, tmp_path / "plots")
    assert_figures(paths, copy.stem, ["power_spectrum", "correlation"])
    for name in ("pdf", "peaks_minima", "minkowski"):
        assert f"no {name} figure (statistics not computed" in caplog.text


def test_nan_rows_excluded_patches_and_partial_statistics(ours, tmp_path):
    """NaN rows and bins, patches excluded in /summary, and only some statistics present (C_ell and
    the PDF of one scale): the figures that have data are drawn, the others skipped."""
    stats, _, _ = ours
    copy = tmp_path / stats.name
    shutil.copy(stats, copy)
    keep = ("power_spectra/ngal_0/cl", "smoothed_statistics/ngal_0/sl_40/pdf")
    with h5py.File(copy, "r+") as handle:
        for group in ("bispectra", "power_spectra/ngal_30", "smoothed_statistics/ngal_30",
                      "smoothed_statistics/ngal_0/sl_60"):
            del handle[group]
        for name in ("peaks", "minima", "minkowski", "sigma"):
            del handle[f"smoothed_statistics/ngal_0/sl_40/{name}"]
        for name in keep:
            values = handle[name][...]
            values[3] = np.nan
            values[:, 0] = np.nan
            handle[name][...] = values
        handle["summary"].attrs["excluded_patches"] = np.array([0, 5])
    results = load_results(copy)
    assert results.used.sum() == results.used.size - 2
    assert np.isnan(summarise_patches(results.rows(keep[0])).mean[0])
    assert_figures(plot_results(copy, tmp_path / "plots"), copy.stem, ["power_spectrum", "pdf", "correlation"])


def test_data_vector_is_the_blocks_side_by_side_and_correlation_is_corrcoef():
    data = load_results(ORIGINAL).data
    blocks = data_vector_blocks(data, ngal=0, smoothing_scales=["2", "10"])
    expected_paths = ["power_spectra/ngal_0/cl"] + [f"bispectra/ngal_0/{b}" for b in
                                                    ("equilateral", "isosceles", "squeezed")]
    for sl in ("2", "10"):
        expected_paths += [f"smoothed_statistics/ngal_0/sl_{sl}/{s}" for s in
                           ("pdf", "peaks", "minima", "minkowski/v0", "minkowski/v1", "minkowski/v2")]
    assert [path for _, path in blocks] == expected_paths
    with h5py.File(ORIGINAL, "r") as handle:
        expected = np.hstack([handle[path][...].astype(np.float64) for path in expected_paths])
    rows = assemble_data_vector(data, blocks)
    np.testing.assert_array_equal(rows, expected)
    assert rows.shape == (265, 16 * 8)
    matrix, used = correlation_matrix(rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(matrix, np.corrcoef(expected, rowvar=False), rtol=1e-12, atol=1e-12,
                                   equal_nan=True)
    assert used == 265
    # constant bins (V0 at nu = -3.5 is 1 in every patch) have an undefined correlation
    assert np.isnan(matrix[np.ix_([0], [8 * 4 + 8 * 3])]).all()
    # a patch with a NaN drops out of the correlation, the others are used as they are
    rows[7, 5] = np.nan
    matrix, used = correlation_matrix(rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(matrix, np.corrcoef(np.delete(expected, 7, axis=0), rowvar=False),
                                   rtol=1e-12, atol=1e-12, equal_nan=True)
    assert used == 264
    # a bin without any finite value is masked; the other bins use every patch
    rows = assemble_data_vector(data, blocks)
    rows[:, 3] = np.nan
    matrix, used = correlation_matrix(rows)
    assert used == 265 and np.isnan(matrix[3]).all() and np.isnan(matrix[:, 3]).all()
    kept = np.delete(np.arange(rows.shape[1]), 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(matrix[np.ix_(kept, kept)], np.corrcoef(expected[:, kept], rowvar=False),
                                   rtol=1e-12, atol=1e-12, equal_nan=True)


def test_patch_summary_ignores_nan_rows():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(40, 5))
    with_nan = rows.copy()
    with_nan[[2, 9]] = np.nan
    summary = summarise_patches(with_nan)
    finite = np.delete(rows, [2, 9], axis=0)
    np.testing.assert_allclose(summary.mean, finite.mean(axis=0))
    np.testing.assert_allclose(summary.std, finite.std(axis=0, ddof=1))
    np.testing.assert_allclose(summary.sem, finite.std(axis=0, ddof=1) / np.sqrt(38))
    assert summary.count.tolist() == [38] * 5


def test_limber_overlay_keeps_the_overlapping_bins_as_dimensionless_spectrum():
    validation = {"status": "ok", "maps": {"1.0": {"ell": [20.0, 250.0, 400.0, 3500.0],
                                                   "cl_predicted": [1e-7, 2e-9, 1e-9, 1e-11],
                                                   "cl_measured": [1e-7, 3e-9, 1e-9, 1e-11]}}}
    l_edges = np.geomspace(300, 3000, 9)
    overlay, reason = limber_overlay(validation, 1.0, l_edges)
    assert reason == "" and overlay["ell"].tolist() == [400.0]
    np.testing.assert_allclose(overlay["predicted"], [400 * 401 * 1e-9 / (2 * np.pi)])
    assert limber_overlay(validation, 0.5, l_edges)[0] is None  # no map at this zs
    assert limber_overlay(validation, 1.0, np.geomspace(5000, 8000, 3))[0] is None  # no overlap
    assert limber_overlay({"status": "skipped", "reason": "no usmesh"}, 1.0, l_edges)[0] is None


def test_footprint_outline_is_closed_and_runs_through_the_vertices():
    theta_c, phi_c, side = 1.1, 2.5, 10.0
    theta, phi = footprint_outline(theta_c, phi_c, side, points_per_edge=8)
    assert theta.shape == (33,) and np.isclose(theta[0], theta[-1]) and np.isclose(phi[0], phi[-1])
    outline = hp.ang2vec(theta, phi)
    np.testing.assert_allclose(outline[::8], np.vstack([patch_footprint_vertices(theta_c, phi_c, side)] * 2)[:5],
                               atol=1e-12)
    # every point lies within the half diagonal of the centre (edges are great-circle arcs)
    distance = np.arccos(np.clip(outline @ hp.ang2vec(theta_c, phi_c), -1, 1))
    assert distance.max() <= np.radians(side) / np.sqrt(2) + 1e-12


def test_bad_paths_are_value_errors(ours, tmp_path):
    stats, _, _ = ours
    with pytest.raises(ValueError, match="stats_path"):
        plot_results(tmp_path / "missing.h5", tmp_path)
    with pytest.raises(ValueError, match="kappa_map_path"):
        plot_results(stats, tmp_path, kappa_map_path=tmp_path / "kappa_zs1.0_s7.fits")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="validation_json"):
        plot_results(stats, tmp_path, validation_json=tmp_path / "broken.json")
