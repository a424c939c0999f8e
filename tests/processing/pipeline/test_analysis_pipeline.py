"""AnalysisPipeline on Gaussian random kappa maps: layout, science checks, rank invariance, restart,
plugins, bad inputs, and the seed's "Step Composition" / "Custom Pipeline Creation" snippets."""
import signal
import subprocess
import time

import h5py
import healpy as hp
import numpy as np
import pytest
import yaml

from conftest import REPO, launch_command, mpi_environment, run_cli, write_gaussian_kappa
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import InputError
from lensing_ssc.io.healpix_maps import write_nested_map
from lensing_ssc.plugins import register_pipeline_plugin
from lensing_ssc.processing.pipeline import AnalysisPipeline, BasePipeline
from lensing_ssc.processing.steps import DataLoadingStep, PatchingStep, StatisticsStep, ValidationStep
from lensing_ssc.science.limber import pixel_window
from lensing_ssc.science.statistics.binning import ell_centers, ell_edges

SMALL_ANALYSIS = {"patch_size_deg": 20.0, "xsize": 64, "ngal": [0, 1], "smoothing_lengths": [40.0, 60.0],
                  "lmin": 40.0, "lmax": 200.0, "nbin": 4}


def write_config(tmp_path, **analysis):
    config = {"output_dir": str(tmp_path), "pipeline": {"batch_size": 8},
              "analysis": {**SMALL_ANALYSIS, **analysis}}
    path = tmp_path / "analysis.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def datasets(path):
    found = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def assert_same_datasets(first, second):
    a, b = datasets(first), datasets(second)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """One analysis run (1 rank, in process) of a Gaussian random map, shared by the checks below."""
    tmp_path = tmp_path_factory.mktemp("analysis")
    write_gaussian_kappa(tmp_path / "kappa")
    config = ProcessingConfig.from_yaml(write_config(tmp_path))
    result = AnalysisPipeline(config).execute()
    return tmp_path, config, result


def test_result_file_has_the_original_layout_and_provenance(analysed):
    tmp_path, config, result = analysed
    assert result.success and result.outputs == [str(tmp_path / "stats" / "stats_zs1.0_s7_oa20.h5")]
    with h5py.File(result.outputs[0], "r") as handle:
        npatch = handle["patches/centers"].shape[0]
        assert npatch == 59  # 20 deg: 67 Fibonacci points minus 8 polar (SCIENCE.md §4.1)
        assert handle["power_spectra/ngal_0/cl"].shape == (npatch, 4)
        for name in ("equilateral", "isosceles", "squeezed"):
            assert handle[f"bispectra/ngal_1/{name}"].dtype == np.float32
        base = "smoothed_statistics/ngal_1/sl_40"
        for name in ("pdf", "peaks", "minima", "minkowski/v0", "minkowski/v1", "minkowski/v2"):
            assert handle[f"{base}/{name}"].shape == (npatch, 8)
        assert handle[f"{base}/sigma/0"].shape == (npatch,)
        np.testing.assert_array_equal(handle["metadata/parameters/ngal_list"][()], [0, 1])
        np.testing.assert_array_equal(handle["metadata/parameters/sl_list"][()], [40, 60])
        assert handle["metadata/parameters"].attrs["nbin"] == 4
        assert handle.attrs["ordering"] == "NESTED"
        assert handle.attrs["config_hash"] == config.science_hash()
        assert handle.attrs["simulation_seed"] == 7
        cl = handle["power_spectra/ngal_0/cl"][()]
        np.testing.assert_allclose(handle["summary/power_spectra/ngal_0/cl/mean"][()], cl.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(handle["summary/power_spectra/ngal_0/cl/cov"][()],
                                   np.cov(cl.astype(np.float64), rowvar=False), rtol=1e-6)
        assert not any(p.endswith(".inprogress") for p in map(str, (tmp_path / "stats").iterdir()))


def test_summary_is_the_numpy_summary_of_the_patch_rows(analysed):
    """``/summary/{path}``, for every per-patch dataset, recomputed with numpy from the stored float32
    rows of the patches not listed in ``excluded_patches``: mean; cov with ddof 1; std =
    sqrt(diag(cov)); corr = cov / outer(std, std), with 0 off the diagonal and 1 on it for bins of zero
    variance (e.g. empty extreme nu bins); the Hartlap factor (n - p - 2)/(n - 1) as an attribute."""
    _, config, result = analysed
    with h5py.File(result.outputs[0], "r") as handle:
        npatch = handle["patches/centers"].shape[0]
        summary = handle["summary"]
        flags = handle["patches/replication_flag"][()]
        excluded = summary.attrs["excluded_patches"]
        np.testing.assert_array_equal(excluded, np.flatnonzero(flags) if config.analysis.exclude_flagged_patches
                                      else [])
        include = np.ones(npatch, dtype=bool)
        include[excluded] = False
        assert summary.attrs["n_patches_used"] == include.sum()
        row_paths = [path for path in datasets(result.outputs[0])
                     if path.split("/")[0] in ("power_spectra", "bispectra", "smoothed_statistics")]
        summarised = []
        summary.visit(lambda name: summarised.append(name[:-len("/mean")]) if name.endswith("/mean") else None)
        assert sorted(summarised) == sorted(row_paths)
        for path in row_paths:
            rows = handle[path][()].astype(np.float64).reshape(npatch, -1)[include]
            deviation = rows - rows.mean(axis=0)
            cov = deviation.T @ deviation / (len(rows) - 1)
            std = np.sqrt(np.diag(cov))
            live = std > 0
            corr = np.zeros_like(cov)
            corr[np.ix_(live, live)] = cov[np.ix_(live, live)] / np.outer(std[live], std[live])
            np.fill_diagonal(corr, 1.0)
            stored = {key: summary[f"{path}/{key}"][()] for key in ("mean", "std", "cov", "corr")}
            scale = np.abs(cov).max()
            np.testing.assert_allclose(stored["mean"], rows.mean(axis=0), rtol=1e-12, err_msg=path)
            np.testing.assert_allclose(stored["cov"], cov, rtol=1e-10, atol=1e-12 * scale, err_msg=path)
            np.testing.assert_allclose(stored["std"], std, rtol=1e-10, err_msg=path)
            np.testing.assert_allclose(stored["std"], np.sqrt(np.diag(stored["cov"])), rtol=1e-15, err_msg=path)
            np.testing.assert_allclose(stored["corr"], corr, rtol=0, atol=1e-9, err_msg=path)
            nbins = rows.shape[1]
            hartlap = (len(rows) - nbins - 2) / (len(rows) - 1) if len(rows) > nbins + 2 else np.nan
            np.testing.assert_allclose(summary[path].attrs["hartlap_factor"], hartlap, rtol=1e-15, err_msg=path)


def test_mean_patch_power_spectrum_recovers_the_input_spectrum(analysed):
    """Gaussian random field: the patch-averaged ell(ell+1)C/2pi matches the input spectrum times the
    HEALPix pixel window (the projection samples the nside-128 map)."""
    _, config, result = analysed
    with h5py.File(result.outputs[0], "r") as handle:
        measured = handle["power_spectra/ngal_0/cl"][()].mean(axis=0)
    ell = ell_centers(ell_edges(40.0, 200.0, 4))
    window = np.interp(ell, np.arange(3 * 128), pixel_window(128, 3 * 128 - 1))
    expected = 1e-4 * (ell / 1000.0) ** 0.5 * window ** 2
    # 59 patches of 20 deg: per-bin scatter of the mean is a few per cent; the nearest-pixel gnomonic
    # sampling and the cubic-spline 45-degree rotation smooth a little more, hence 15 %.
    np.testing.assert_allclose(measured, expected, rtol=0.15)


def test_shape_noise_adds_its_white_power(analysed):
    """Cl(ngal) - Cl(0) = ell(ell+1) sigma_pix^2 A_pix / 2pi (SCIENCE.md §5.1, §11.2)."""
    _, config, result = analysed
    with h5py.File(result.outputs[0], "r") as handle:
        noiseless = handle["power_spectra/ngal_0/cl"][()].astype(float).mean(axis=0)
        noisy = handle["power_spectra/ngal_1/cl"][()].astype(float).mean(axis=0)
    pixarea_arcmin2 = (20.0 * 60 / 64) ** 2
    sigma_pix = 0.26 / np.sqrt(1 * pixarea_arcmin2)
    noise_power = sigma_pix ** 2 * pixarea_arcmin2 * (np.pi / 10800) ** 2
    ell = ell_centers(ell_edges(40.0, 200.0, 4))
    # ngal = 1 makes the noise comparable to the signal, so the signal x noise cross term (zero on
    # average, scatter ~ sqrt(2 S / (N modes))) stays below ~10 %.
    np.testing.assert_allclose(noisy - noiseless, ell * (ell + 1) * noise_power / (2 * np.pi), rtol=0.25)


def test_smoothed_statistics_of_a_gaussian_field_are_gaussian(analysed):
    """PDF of nu close to the normal density; V0 close to erfc(nu/sqrt2)/2 (Gaussian MFs)."""
    from scipy.special import erfc
    from scipy.stats import norm
    _, _, result = analysed
    with h5py.File(result.outputs[0], "r") as handle:
        pdf = handle["smoothed_statistics/ngal_0/sl_40/pdf"][()].mean(axis=0)
        v0 = handle["smoothed_statistics/ngal_0/sl_40/minkowski/v0"][()].mean(axis=0)
    edges = np.linspace(-4, 4, 9)
    expected_pdf = np.diff(norm.cdf(edges)) / np.diff(norm.cdf(edges)).sum()
    np.testing.assert_allclose(pdf[2:6], expected_pdf[2:6], atol=0.05)
    np.testing.assert_allclose(v0[2:6], 0.5 * erfc(edges[2:6] / np.sqrt(2)), atol=0.08)


def test_rerun_skips_a_finished_map_and_drops_leftover_checkpoints(analysed):
    tmp_path, config, result = analysed
    leftover = tmp_path / "checkpoints" / "analyze" / "stats_zs1.0_s7_oa20"  # a kill after the write
    leftover.mkdir(parents=True)
    (leftover / "rank00000.jsonl").write_text("")
    again = AnalysisPipeline(config).execute()
    assert again.tasks_done == 0 and again.outputs == result.outputs
    assert not leftover.exists()


def test_one_two_three_ranks_and_kill_resume_give_identical_datasets(tmp_path):
    write_gaussian_kappa(tmp_path / "kappa")
    config = write_config(tmp_path)
    first = run_cli(["analyze", config], nranks=1)
    assert first.returncode == 0, first.stderr
    output = tmp_path / "stats" / "stats_zs1.0_s7_oa20.h5"
    reference = tmp_path / "one_rank.h5"
    output.rename(reference)

    job = subprocess.Popen(launch_command(["-m", "lensing_ssc", "analyze", config, "--restart"], 2),
                           env=mpi_environment(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tasks_dir = tmp_path / "checkpoints" / "analyze" / "stats_zs1.0_s7_oa20" / "tasks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(tasks_dir.glob("*.npz"))) < 2:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    subprocess.run(["pkill", "-9", "-f", f"lensing_ssc analyze {config}"], check=False)
    resumed = run_cli(["analyze", config], nranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_datasets(reference, output)
    three = run_cli(["analyze", config, "--restart"], nranks=3)
    assert three.returncode == 0, three.stderr
    assert_same_datasets(reference, output)


@register_pipeline_plugin("test_patch_moments")
class PatchMoments:
    def process(self, data, config):
        return {"moments": np.array([data.mean(), data.var()])}


def test_statistic_plugin_lands_under_plugins(tmp_path):
    write_gaussian_kappa(tmp_path / "kappa")
    config = ProcessingConfig.from_yaml(write_config(tmp_path, statistics=["power_spectrum", "test_patch_moments"]))
    result = AnalysisPipeline(config).execute()
    with h5py.File(result.outputs[0], "r") as handle:
        moments = handle["plugins/test_patch_moments/moments"][()]
        assert moments.shape == (59, 2) and np.all(moments[:, 1] > 0)
        assert "smoothed_statistics" not in handle and "bispectra" not in handle


def test_unknown_statistic_is_a_config_error(tmp_path):
    write_gaussian_kappa(tmp_path / "kappa")
    done = run_cli(["analyze", write_config(tmp_path, statistics=["power_spectrum", "bogus_stat"])])
    assert done.returncode == 2
    assert "analysis.statistics" in done.stderr and "bogus_stat" in done.stderr


def test_missing_maps_and_ring_ordered_map_are_refused_with_exit_2(tmp_path):
    done = run_cli(["analyze", write_config(tmp_path)])
    assert done.returncode == 2 and "no kappa maps" in done.stderr
    (tmp_path / "kappa").mkdir(exist_ok=True)
    hp.write_map(str(tmp_path / "kappa" / "kappa_zs1.0_s1.fits"), np.zeros(hp.nside2npix(16)), dtype=np.float32)
    done = run_cli(["analyze", write_config(tmp_path)])
    assert done.returncode == 2 and "ORDERING is RING" in done.stderr
    assert not (tmp_path / "stats").exists() or not list((tmp_path / "stats").iterdir())


def test_seed_step_composition_snippet_runs_as_written(tmp_path):
    write_gaussian_kappa(tmp_path / "maps")
    config = ProcessingConfig(data_dir=str(tmp_path / "maps"), output_dir=str(tmp_path / "out"), num_workers=1,
                              analysis=SMALL_ANALYSIS)
    input_data = str(tmp_path / "maps")
    # --- the seed's "Step Composition" snippet ---
    loader = DataLoadingStep(config)
    patcher = PatchingStep(config)
    analyzer = StatisticsStep(config)

    data = loader.execute(input_data)
    patches = patcher.execute(data)
    results = analyzer.execute(patches)
    # ---
    first_task = results["runners"][0].load(results["tasks"][0])
    assert len(results["tasks"]) == 6 and first_task["power_spectra/ngal_0/cl"].shape == (10, 4)  # batch_size 10


def test_seed_custom_pipeline_snippet_runs_as_written(tmp_path):
    write_gaussian_kappa(tmp_path / "maps")
    config = ProcessingConfig(data_dir=str(tmp_path / "maps"), output_dir=str(tmp_path / "out"), num_workers=8)

    # --- the seed's "Custom Pipeline Creation" snippet ---
    class CustomPipeline(BasePipeline):
        def _create_steps(self):
            return [
                DataLoadingStep(self.config),
                ValidationStep(self.config),
                # Add more steps as needed
            ]

        def _validate_config(self):
            # Custom configuration validation
            pass

    # Use custom pipeline
    pipeline = CustomPipeline(config)
    result = pipeline.execute()
    # ---
    assert result.success and [m.zs for m in result.data["maps"]] == [1.0]


def test_validation_step_rejects_non_finite_maps(tmp_path):
    path = write_gaussian_kappa(tmp_path / "maps", nside=16)
    values = hp.read_map(str(path), nest=True)
    values[3] = np.nan
    write_nested_map(path, values)
    config = ProcessingConfig(data_dir=str(tmp_path / "maps"), output_dir=str(tmp_path / "out"))
    data = DataLoadingStep(config).execute(None)
    with pytest.raises(InputError, match="non-finite"):
        ValidationStep(config).execute(data)


@pytest.mark.mpi(min_size=2)
def test_analysis_in_process_under_mpi_matches_serial_patch_analysis(mpi_tmp_path):
    """With the node-shared map (the default) and, identical, with per-rank copies; also with one task,
    where a rank has none and still takes part in loading the shared map."""
    from mpi4py import MPI
    from lensing_ssc.processing.steps.analysis_steps import noise_base_seed, settings_from_config
    from lensing_ssc.science.fibonacci import patch_centers
    from lensing_ssc.science.noise import noise_generator
    from lensing_ssc.science.patch_analysis import analyse_patch
    from lensing_ssc.science.patches import gnomonic_patch

    if MPI.COMM_WORLD.rank == 0:
        write_gaussian_kappa(mpi_tmp_path / "kappa")
    MPI.COMM_WORLD.Barrier()
    config = ProcessingConfig(output_dir=str(mpi_tmp_path), analysis=SMALL_ANALYSIS, batch_size=5)
    result = AnalysisPipeline(config).execute()
    assert result.success
    # Patch 41, computed here serially from the science functions, equals the file's row 41.
    ring = hp.reorder(hp.read_map(str(mpi_tmp_path / "kappa" / "kappa_zs1.0_s7.fits"), nest=True), n2r=True)
    theta, phi = patch_centers(20.0)
    patch = gnomonic_patch(ring, theta[41], phi[41], 20.0, 64).astype(np.float64)
    base = noise_base_seed(0, 7)
    expected = analyse_patch(patch, settings_from_config(config),
                             lambda ngal: noise_generator(base, 1.0, 41, ngal, "shape_noise"))
    with h5py.File(result.outputs[0], "r") as handle:
        for name in ("power_spectra/ngal_1/cl", "smoothed_statistics/ngal_1/sl_60/minkowski/v2"):
            np.testing.assert_array_equal(handle[name][41], expected[name].astype(np.float32))
    for shared, batch_size in ((False, 5), (True, 59)):
        other = ProcessingConfig(output_dir=str(mpi_tmp_path / f"shared_{shared}"), analysis=SMALL_ANALYSIS,
                                 data_dir=str(mpi_tmp_path / "kappa"),
                                 pipeline={"batch_size": batch_size, "node_shared_maps": shared})
        assert_same_datasets(result.outputs[0], AnalysisPipeline(other).execute().outputs[0])


@pytest.mark.mpi
def test_node_shared_map_is_read_once_per_node_and_not_for_checkpointed_tasks(mpi_tmp_path, monkeypatch):
    from mpi4py import MPI
    from lensing_ssc.processing.steps import analysis_steps

    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        write_gaussian_kappa(mpi_tmp_path / "kappa", nside=32)
    comm.Barrier()
    config = ProcessingConfig(output_dir=str(mpi_tmp_path), analysis={**SMALL_ANALYSIS, "xsize": 32},
                              pipeline={"batch_size": 59})  # one task for the 59 patches: one rank has it
    reads, read = [], analysis_steps.read_ring_map_into
    monkeypatch.setattr(analysis_steps, "read_ring_map_into", lambda path, out: (reads.append(path), read(path, out)))
    data = PatchingStep(config).execute(ValidationStep(config).execute(DataLoadingStep(config).execute(None)))
    StatisticsStep(config).execute(data)
    assert sum(comm.allgather(len(reads))) == 1  # the ranks of this test share one node
    StatisticsStep(config).execute(data)  # every task is checkpointed now: no rank needs the map
    assert sum(comm.allgather(len(reads))) == 1


def _unlabelled_map(directory):
    """A map written without an ORDERING card (astropy, no healpy header)."""
    from astropy.io import fits
    directory.mkdir(parents=True, exist_ok=True)
    column = fits.Column(name="T", format="1024E", array=np.zeros((12, 1024), dtype=np.float32))
    table = fits.BinTableHDU.from_columns([column])
    table.header["NSIDE"] = 32
    table.header["PIXTYPE"] = "HEALPIX"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(directory / "kappa_zs1.0_s1.fits")


def _nan_map(directory):
    path = write_gaussian_kappa(directory, nside=16)
    values = hp.read_map(str(path), nest=True)
    values[5] = np.nan
    write_nested_map(path, values)


@pytest.mark.parametrize("make_input, analysis, phrase", [
    (_unlabelled_map, {}, "ORDERING is missing"),
    (_nan_map, {}, "non-finite pixels"),
    (lambda d: write_gaussian_kappa(d, nside=16), {"patch_size_deg": 80.0}, "analysis.patch_size_deg"),
    (lambda d: write_gaussian_kappa(d, nside=16), {"xsize": 63}, "analysis.xsize"),
    (lambda d: write_gaussian_kappa(d, nside=16), {"xsize": -2}, "analysis.xsize"),
    (lambda d: write_gaussian_kappa(d, nside=16), {"statistics": ["pdf", "nope"]}, "nope"),
])
def test_bad_analysis_inputs_exit_2_without_results(tmp_path, capsys, make_input, analysis, phrase):
    from lensing_ssc.cli import main
    make_input(tmp_path / "kappa")
    assert main(["analyze", str(write_config(tmp_path, **analysis))]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and phrase in error[0]
    assert not list(tmp_path.glob("stats/*.h5"))


def test_geometry_cache_gives_the_same_results_and_is_reused(tmp_path):
    write_gaussian_kappa(tmp_path / "kappa", nside=32)
    plain = ProcessingConfig(output_dir=str(tmp_path / "plain"), data_dir=str(tmp_path / "kappa"),
                             analysis={**SMALL_ANALYSIS, "xsize": 32})
    cached = ProcessingConfig(output_dir=str(tmp_path / "cached"), data_dir=str(tmp_path / "kappa"),
                              cache_dir=str(tmp_path / "cache"), analysis={**SMALL_ANALYSIS, "xsize": 32})
    reference = AnalysisPipeline(plain).execute().outputs[0]
    first = AnalysisPipeline(cached).execute().outputs[0]
    entries = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 59  # one per patch
    assert_same_datasets(reference, first)
    again = AnalysisPipeline(cached, input_data=str(tmp_path / "kappa"))
    again.config.pipeline.resume = "restart"
    assert_same_datasets(reference, again.execute().outputs[0])
    assert sorted((tmp_path / "cache").glob("*.npz")) == entries
