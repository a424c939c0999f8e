"""The ensemble stage on real files of the original code (reduced copies in tests/data/original_ensemble,
and the full files when /work/shared/reference exists), on files of our layout, on bad input, and
under MPI (the 2-rank output equals the 1-rank output)."""
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import REPO, TEST_DATA, run_python
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import ConfigError, InputError, exit_code_for
from lensing_ssc.processing.pipeline.ensemble import (EnsembleInputStep, EnsemblePipeline, EnsembleStatisticsStep,
                                                      ensemble_path)

ORIGINAL = TEST_DATA / "original_ensemble"
FULL_REFERENCE = Path("/work/shared/reference/original_stats_zs1.0")
CL = "power_spectra/ngal_0/cl"
PDF = "smoothed_statistics/ngal_0/sl_2/pdf"
SIGMA0 = "smoothed_statistics/ngal_0/sl_2/sigma/0"
# SCIENCE.md §11.5 / issue 10: Var(C_ell) bigbox/tiled, zs = 1.0, noiseless, patch 132 removed.
REFERENCE_RATIO = [1.068, 1.061, 1.013, 1.005, 1.063, 1.097, 1.080, 1.116]


def families(root=ORIGINAL):
    return {name: [str(root / name / "stats_zs*_s*_oa10.h5")] for name in ("bigbox", "tiled")}


def make_config(output, root=ORIGINAL, **ensemble):
    settings = {"families": families(root), "exclude_patches": [132], "bootstrap": 100}
    settings.update(ensemble)
    return ProcessingConfig(output_dir=str(output), ensemble=settings, pipeline={"memory_monitoring": False})


def pooled_rows(root, family, path, exclude=()):
    """Rows of ``path`` of every file of ``family``, read here with h5py, minus the excluded patches."""
    blocks = []
    for file in sorted((root / family).glob("stats_zs*_s*_oa10.h5")):
        with h5py.File(file, "r") as handle:
            rows = handle[path][()].astype(np.float64)
        blocks.append(np.delete(rows.reshape(len(rows), -1), list(exclude), axis=0))
    return np.concatenate(blocks)


@pytest.fixture(scope="module")
def original_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("ensemble")
    result = EnsemblePipeline(make_config(output)).execute()
    return result, Path(result.outputs[0])


def test_variance_ratio_of_the_original_power_spectrum_reproduces_science_11_5(original_run):
    _, path = original_run
    with h5py.File(path, "r") as handle:
        ratios = handle[f"ratios/bigbox_over_tiled/{CL}"]
        np.testing.assert_allclose(ratios["variance_ratio"][()], REFERENCE_RATIO, atol=0.002)
        assert np.all(np.abs(ratios["mean_ratio"][()] - 1) < 0.005)
        # errors: bootstrap over 11 and 20 simulations, a few percent
        assert np.all((ratios["variance_ratio_err"][()] > 0.01) & (ratios["variance_ratio_err"][()] < 0.1))
        assert handle.attrs["bootstrap"] == 100 and list(handle.attrs["exclude_patches"]) == [132]


def test_family_summaries_equal_numpy_on_the_pooled_rows(original_run):
    _, path = original_run
    with h5py.File(path, "r") as handle:
        for family, n_sims in (("bigbox", 11), ("tiled", 20)):
            group = handle[f"families/{family}"]
            assert group.attrs["n_simulations"] == n_sims and group.attrs["n_patches_used"] == 264 * n_sims
            assert group.attrs["n_excluded_listed"] == n_sims
            exclusion = group["exclusion"][()]
            assert exclusion.shape == (n_sims, 265) and np.all(exclusion[:, 132] == 1)
            assert np.count_nonzero(exclusion) == n_sims
            for name in (CL, PDF, SIGMA0):
                rows = pooled_rows(ORIGINAL, family, name, exclude=[132])
                np.testing.assert_allclose(group[f"{name}/mean"][()], rows.mean(axis=0), rtol=1e-12)
                np.testing.assert_allclose(group[f"{name}/cov"][()], np.atleast_2d(np.cov(rows, rowvar=False)),
                                           rtol=1e-10)
                if rows.shape[1] > 1:
                    np.testing.assert_allclose(group[f"{name}/corr"][()], np.corrcoef(rows, rowvar=False),
                                               rtol=1e-10)
                n_bins = rows.shape[1]
                assert group[name].attrs["hartlap_factor"] == pytest.approx((len(rows) - n_bins - 2) / (len(rows) - 1))
            # data vector: power spectrum then PDF (SCIENCE.md §6.6), sigma0 is not part of it
            vector = group["data_vector"]
            assert [p.decode() for p in vector["paths"][()]] == [CL, PDF]
            assert list(vector["offsets"][()]) == [0, 8, 16]
            joint = np.hstack([pooled_rows(ORIGINAL, family, p, exclude=[132]) for p in (CL, PDF)])
            np.testing.assert_allclose(vector["cov"][()], np.cov(joint, rowvar=False), rtol=1e-10, atol=1e-25)
            np.testing.assert_allclose(vector["corr"][()], np.corrcoef(joint, rowvar=False), rtol=1e-9, atol=1e-12)


def test_plots_are_written(original_run):
    result, path = original_run
    pngs = sorted(Path(p).name for p in result.outputs if p.endswith(".png"))
    assert pngs == [f"{path.stem}_{name}.png" for name in ("correlation", "cov_ratio", "variance_ratio")]
    assert all(Path(p).stat().st_size > 10_000 for p in result.outputs if p.endswith(".png"))


def test_sigma0_variance_ratio_with_every_patch(tmp_path):
    # SCIENCE.md §11.5: sigma0 variance ratio (sl 2, all patches) 1.07 at zs = 1.0.
    config = make_config(tmp_path, exclude_patches=[], bootstrap=0)
    steps = [EnsembleInputStep(config), EnsembleStatisticsStep(config)]
    pooled = steps[1].execute(steps[0].execute(None))["pooled"][0]
    assert pooled["ratios"][SIGMA0]["variance_ratio"][0] == pytest.approx(1.07, abs=0.005)
    assert "variance_ratio_err" not in pooled["ratios"][SIGMA0]  # bootstrap: 0


def test_outlier_rule_matches_a_brute_force_cut(tmp_path):
    config = make_config(tmp_path, exclude_patches=[], outlier_sigma=4.0, bootstrap=0)
    result = EnsemblePipeline(config).execute()
    with h5py.File(result.outputs[0], "r") as handle:
        for family, n_sims in (("bigbox", 11), ("tiled", 20)):
            expected = np.zeros(n_sims * 265, dtype=bool)
            for name in (CL, PDF, SIGMA0):
                rows = pooled_rows(ORIGINAL, family, name)
                std = rows.std(axis=0, ddof=1)
                live = std > 0
                expected |= np.any(np.abs(rows - rows.mean(axis=0))[:, live] >= 4.0 * std[live], axis=1)
            exclusion = handle[f"families/{family}/exclusion"][()].ravel()
            np.testing.assert_array_equal(exclusion == 3, expected)
            assert handle[f"families/{family}"].attrs["n_excluded_outlier"] == expected.sum() > 0
            kept = pooled_rows(ORIGINAL, family, CL)[~expected]
            np.testing.assert_allclose(handle[f"families/{family}/{CL}/cov"][()], np.cov(kept, rowvar=False),
                                       rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# Files of our layout: provenance attrs and replication flags.

def write_our_file(path, seed, rows, flags, zs=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.attrs.update({"zs": zs, "simulation_seed": seed, "package": "lensing_ssc"})
        handle.create_dataset(CL, data=rows.astype(np.float32))
        handle.create_dataset("patches/replication_flag", data=flags)
        handle.create_dataset("patches/centers", data=np.zeros((len(rows), 2)))
        parameters = handle.create_group("metadata/parameters")
        parameters.create_dataset("l_edges", data=np.geomspace(300, 3000, 5))
        parameters.attrs["patch_size_deg"] = 10


@pytest.mark.parametrize("exclude_flagged", [True, False])
def test_our_files_replication_flags_are_excluded_and_recorded(tmp_path, exclude_flagged):
    rng = np.random.default_rng(0)
    flags = np.zeros(40, dtype=bool)
    flags[[3, 17]] = True
    rows = {}
    for family, seeds in (("big", [1, 2, 3]), ("small", [4, 5])):
        for seed in seeds:
            rows[family, seed] = rng.normal(1.0, 0.1, size=(40, 4))
            write_our_file(tmp_path / family / f"out_{seed}.h5", seed, rows[family, seed], flags)
    config = ProcessingConfig(output_dir=str(tmp_path / "out"), pipeline={"memory_monitoring": False}, ensemble={
        "families": {"big": [str(tmp_path / "big" / "*.h5")], "small": [str(tmp_path / "small" / "*.h5")]},
        "exclude_flagged": exclude_flagged, "bootstrap": 20})
    result = EnsemblePipeline(config).execute()
    assert Path(result.outputs[0]).name == "ensemble_zs1.0_oa10.h5"
    with h5py.File(result.outputs[0], "r") as handle:
        group = handle["families/big"]
        assert list(group.attrs["simulation_seeds"]) == [1, 2, 3]
        assert group.attrs["n_excluded_flagged"] == (6 if exclude_flagged else 0)
        keep = ~flags if exclude_flagged else np.ones(40, dtype=bool)
        pooled = np.concatenate([rows["big", s].astype(np.float32).astype(np.float64)[keep] for s in (1, 2, 3)])
        np.testing.assert_allclose(group[f"{CL}/cov"][()], np.cov(pooled, rowvar=False), rtol=1e-10)
        assert np.all((group["exclusion"][()] == 2) == (flags[None, :] & exclude_flagged))
        assert f"ratios/big_over_small/{CL}/variance_ratio_err" in handle


# ---------------------------------------------------------------------------------------------
# Bad input: InputError (exit code 2) naming the file or glob.

def copy_inputs(tmp_path, per_family=3):
    for family in ("bigbox", "tiled"):
        (tmp_path / family).mkdir(parents=True)
        for file in sorted((ORIGINAL / family).glob("*.h5"))[:per_family]:
            shutil.copy(file, tmp_path / family / file.name)
    return tmp_path


def replace_dataset(file, name, values):
    with h5py.File(file, "r+") as handle:
        del handle[name]
        if values is not None:
            handle.create_dataset(name, data=values)


def _empty_glob(root):
    shutil.rmtree(root / "tiled")
    (root / "tiled").mkdir()
    return "tiled/stats_zs*_s*_oa10.h5"


def _binning(root):
    file = root / "bigbox" / "stats_zs1.0_s102_oa10.h5"
    replace_dataset(file, "metadata/parameters/l_edges", np.geomspace(200, 3000, 9))
    return file.name


def _bin_count(root):
    file = root / "tiled" / "stats_zs1.0_s121_oa10.h5"
    with h5py.File(file, "r") as handle:
        rows = handle[CL][()]
    replace_dataset(file, CL, rows[:, :7])
    return file.name


def _patch_count(root):
    file = root / "tiled" / "stats_zs1.0_s201_oa10.h5"
    with h5py.File(file, "r+") as handle:
        for name in (CL, PDF, SIGMA0):
            values = handle[name][()][:264]
            del handle[name]
            handle.create_dataset(name, data=values)
    return file.name


def _missing_dataset(root):
    file = root / "bigbox" / "stats_zs1.0_s104_oa10.h5"
    replace_dataset(file, PDF, None)
    return file.name


def _not_finite(root):
    file = root / "tiled" / "stats_zs1.0_s100_oa10.h5"
    with h5py.File(file, "r+") as handle:
        handle[SIGMA0][7] = np.nan
    return file.name


def _not_hdf5(root):
    file = root / "bigbox" / "stats_zs1.0_s100_oa10.h5"
    file.write_text("not hdf5")
    return file.name


def _missing_redshift(root):
    file = root / "bigbox" / "stats_zs1.0_s104_oa10.h5"
    file.rename(root / "bigbox" / "stats_zs2.0_s104_oa10.h5")
    return "tiled"


@pytest.mark.parametrize("spoil", [_empty_glob, _binning, _bin_count, _patch_count, _missing_dataset, _not_finite,
                                   _not_hdf5, _missing_redshift])
def test_bad_input_raises_input_error_naming_the_file(tmp_path, spoil):
    root = copy_inputs(tmp_path / "in")
    named = spoil(root)
    config = make_config(tmp_path / "out", root=root, bootstrap=0)
    with pytest.raises(InputError) as caught:
        EnsemblePipeline(config).execute()
    assert named in str(caught.value) and exit_code_for(caught.value) == 2
    assert not (tmp_path / "out" / "ensemble").exists()


def test_bad_config_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ensemble.families"):
        EnsemblePipeline(ProcessingConfig(output_dir=str(tmp_path))).execute()
    with pytest.raises(ConfigError, match="ensemble.exclude_patches"):
        EnsemblePipeline(make_config(tmp_path, exclude_patches=[265])).execute()


# ---------------------------------------------------------------------------------------------
# MPI: 2 ranks give the 1-rank output.

def assert_same_ensemble_files(first, second):
    with h5py.File(first, "r") as a, h5py.File(second, "r") as b:
        names_a, names_b = [], []
        a.visit(names_a.append)
        b.visit(names_b.append)
        assert names_a == names_b
        for name in names_a + ["/"]:
            assert sorted(a[name].attrs) == sorted(b[name].attrs), name
            for key, value in a[name].attrs.items():
                np.testing.assert_array_equal(value, b[name].attrs[key], err_msg=f"{name} {key}")
            if isinstance(a[name], h5py.Dataset):
                np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


DRIVER = """
import sys
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import LensingSSCError
from lensing_ssc.processing.pipeline.ensemble import EnsemblePipeline
config = ProcessingConfig.from_yaml(sys.argv[1])
try:
    EnsemblePipeline(config).execute()
except LensingSSCError as exc:
    print(exc, file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def write_yaml(tmp_path, output, root=ORIGINAL):
    config = {"output_dir": str(output), "pipeline": {"memory_monitoring": False},
              "ensemble": {"families": families(root), "exclude_patches": [132], "bootstrap": 100}}
    path = tmp_path / f"{Path(output).name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_bad_input_seen_by_one_rank_stops_both_ranks_with_exit_code_2(tmp_path):
    # The NaN sits in sigma/0, a dataset that only rank 1 reads: rank 0 must not wait for it.
    root = copy_inputs(tmp_path / "bad")
    named = _not_finite(root)
    bad = run_python(["-c", DRIVER, write_yaml(tmp_path, tmp_path / "out", root=root)], nranks=2, cwd=REPO)
    assert bad.returncode == 2 and named in bad.stderr, bad.stderr
    assert "sigma/0" in bad.stderr and not (tmp_path / "out" / "ensemble").exists()


@pytest.mark.mpi(min_size=2)
def test_under_mpi_the_output_equals_the_one_rank_output(mpi_tmp_path):
    from mpi4py import MPI
    from lensing_ssc.parallel import Comm

    world = EnsemblePipeline(make_config(mpi_tmp_path / "world", outlier_sigma=5.0)).execute()
    assert world.success
    failure = None
    if MPI.COMM_WORLD.rank == 0:
        single = EnsemblePipeline(make_config(mpi_tmp_path / "self", outlier_sigma=5.0))
        single.comm = Comm(MPI.COMM_SELF)  # the same pipeline on a one-rank communicator
        alone = single.execute()
        try:
            assert_same_ensemble_files(world.outputs[0], alone.outputs[0])
        except AssertionError as exc:
            failure = exc
    failure = MPI.COMM_WORLD.bcast(failure)
    if failure is not None:
        raise failure


# ---------------------------------------------------------------------------------------------
# The full original files (only where the shared reference directory exists).

@pytest.mark.skipif(not FULL_REFERENCE.is_dir(), reason="needs /work/shared/reference/original_stats_zs1.0")
def test_full_original_files_with_the_shipped_config(tmp_path, monkeypatch):
    if not (REPO.parent / "shared" / "reference" / "original_stats_zs1.0").is_dir():
        pytest.skip("the shipped config's globs (../shared/reference/...) do not resolve from this checkout")
    monkeypatch.chdir(REPO)  # the config's globs are relative to the repository root
    config = ProcessingConfig.from_yaml(REPO / "configs" / "ensemble_original.yaml")
    config.output_dir = str(tmp_path)
    config.ensemble.bootstrap = 0
    data = EnsembleInputStep(config).execute(None)
    group = data["groups"][0]
    assert [len(f) for f in group.families.values()] == [11, 20] and len(group.paths) == 186 - 6
    pooled = EnsembleStatisticsStep(config).execute(data)["pooled"][0]
    np.testing.assert_allclose(pooled["ratios"][CL]["variance_ratio"], REFERENCE_RATIO, atol=0.002)
    assert np.all(np.abs(pooled["ratios"][CL]["mean_ratio"] - 1) < 0.005)
    vector = pooled["families"]["bigbox"]["data_vector"]
    assert vector["cov"].shape == (5 * (4 + 4 * 6) * 8,) * 2  # ngal x (spectra + sl x smoothed) x 8 bins
    assert ensemble_path(config, group).name == "ensemble_zs1.0_oa10.h5"
