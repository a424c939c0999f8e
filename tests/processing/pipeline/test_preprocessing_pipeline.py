"""PreprocessingPipeline and MockPipeline on one rank: sheets against a brute-force reference read with
bigfile, mass conservation, headers/manifest/qc, particle route == HEALPIX route, chunk-size invariance,
reuse/overwrite, real FastPM fixtures, bad inputs, and the mock stage's keep/replace/refuse rules."""
import json
import os
import shutil

import bigfile
import healpy as hp
import numpy as np
import pytest
from astropy.cosmology import FlatLambdaCDM

from conftest import REPO, TEST_DATA
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import ConfigError, InputError, ValidationError
from lensing_ssc.io.healpix_maps import read_header, read_nested_map
from lensing_ssc.mock.lightcone import write_mock_lightcone
from lensing_ssc.processing.pipeline.mock import MOCK_RECORD, MockPipeline
from lensing_ssc.processing.pipeline.preprocessing import PreprocessingPipeline
from lensing_ssc.processing.steps import preprocessing_steps
from lensing_ssc.science.shells import overdensity

NSIDE = 32
MOCK = {"nside": NSIDE, "box_size": 200.0, "nc": 16, "z_max": 0.3, "seed": 5, "particles_per_cell": 0.125,
        "nevents": 2, "with_particles": True}
TINY_MOCK = {"nside": 8, "box_size": 200.0, "nc": 16, "z_max": 0.1, "seed": 3}
COSMO = FlatLambdaCDM(H0=67.74, Om0=0.309, Tcmb0=0.0)
FULLSKY = TEST_DATA / "fastpm_fullsky_subset" / "usmesh"
CONE10 = TEST_DATA / "fastpm_cone10_subset" / "usmesh"


@pytest.fixture(scope="module")
def usmesh(tmp_path_factory):
    path = tmp_path_factory.mktemp("mock") / "usmesh"
    write_mock_lightcone(path, **MOCK)
    return path


def make_config(usmesh_path, output_dir, **preprocessing):
    return ProcessingConfig(data_dir=str(usmesh_path), output_dir=str(output_dir),
                            preprocessing={"sheet_range": [0, 100], "chunk_size": 1000, **preprocessing},
                            pipeline={"memory_monitoring": False})


def run(usmesh_path, output_dir, **preprocessing):
    result = PreprocessingPipeline(make_config(usmesh_path, output_dir, **preprocessing)).execute()
    assert result.success
    return result


def sheet_files(output_dir):
    return sorted((output_dir / "mass_sheets").glob("delta-sheet-*.fits"))


def brute_force_sheets(path):
    """Independent reference: whole columns read with bigfile, np.add.at per slice, astropy distances."""
    usmesh = bigfile.File(str(path))
    npix = int(usmesh["HEALPIX"].attrs["healpix.npix"][0])
    ids = usmesh["HEALPIX/ID"][:].astype(np.int64)
    mass = usmesh["HEALPIX/Mass"][:].astype(np.float64)
    header = usmesh["Header"].attrs
    rhobar = header["MassTable"][1] * (header["NC"][0] / header["BoxSize"][0]) ** 3
    slices = ids // npix
    sheets = {}
    for i in np.unique(slices):
        total = np.zeros(npix)
        np.add.at(total, ids[slices == i] % npix, mass[slices == i])
        a_far, a_near = 0.01 * i, 0.01 * (i + 1)
        chi_far, chi_near = (COSMO.comoving_distance(1 / a - 1).value * COSMO.h for a in (a_far, a_near))
        sheets[int(i)] = {"mass": total, "delta": overdensity(total, npix, chi_far, chi_near, rhobar).astype(np.float32),
                          "rows": int(np.count_nonzero(slices == i)), "chi": (chi_far, chi_near),
                          "pixel_volume": 4 * np.pi * (chi_far**3 - chi_near**3) / (3 * npix)}
    return sheets, rhobar, mass.sum()


def test_sheets_equal_brute_force_reference_and_conserve_mass(usmesh, tmp_path):
    result = run(usmesh, tmp_path)
    reference, rhobar, total_mass = brute_force_sheets(usmesh)
    files = sheet_files(tmp_path)
    assert [int(f.stem[-2:]) for f in files] == sorted(reference)
    assert result.tasks_done == len(reference)
    recovered = 0.0
    for path in files:
        delta, header = read_nested_map(path, dtype=np.float32)
        expected = reference[int(header["SHEET"])]
        np.testing.assert_array_equal(delta, expected["delta"])
        recovered += np.sum((delta.astype(np.float64) + 1.0) * rhobar * expected["pixel_volume"])
    # conservation: the sheets hold all the mass of the rows (float32 storage of delta: ~1e-7)
    assert recovered == pytest.approx(total_mass, rel=1e-6)
    assert not list(tmp_path.rglob("*.inprogress"))
    assert not (tmp_path / "checkpoints" / "preprocess").exists()  # dropped once the stage completed


def test_headers_manifest_and_qc(usmesh, tmp_path):
    run(usmesh, tmp_path)
    reference, rhobar, total_mass = brute_force_sheets(usmesh)
    for path in sheet_files(tmp_path):
        header = read_header(path)
        i = header["SHEET"]
        assert header["ORDERING"] == "NESTED" and header["NSIDE"] == NSIDE
        assert header["A_FAR"] == pytest.approx(0.01 * i, abs=1e-15)
        assert header["A_NEAR"] == pytest.approx(0.01 * (i + 1), abs=1e-15)
        assert header["Z_FAR"] == pytest.approx(1 / (0.01 * i) - 1, rel=1e-12)
        assert header["Z_NEAR"] == pytest.approx(1 / (0.01 * (i + 1)) - 1, rel=1e-12)
        assert (header["CHI_FAR"], header["CHI_NEAR"]) == pytest.approx(reference[i]["chi"], rel=1e-12)
        assert header["MASS"] == pytest.approx(reference[i]["mass"].sum(), rel=1e-12)
        assert header["NROWS"] == reference[i]["rows"] and "NPART" not in header
        assert header["BOXSIZE"] == MOCK["box_size"] and header["SEED"] == MOCK["seed"]
        assert header["MOCK"] is True and header["DATASET"] == "HEALPIX"
        assert (header["H0"], header["OM0"]) == (67.74, 0.309)
        assert header["RHOBAR"] == pytest.approx(rhobar, rel=1e-12)
    manifest = json.loads((tmp_path / "mass_sheets" / "manifest.json").read_text())
    assert [s["index"] for s in manifest["sheets"]] == sorted(reference)
    assert manifest["nside"] == NSIDE and manifest["seed"] == MOCK["seed"] and manifest["ordering"] == "NESTED"
    np.testing.assert_allclose(manifest["edges"], np.linspace(0, 1, 101), atol=1e-15)
    assert manifest["cosmology"]["H0"] == 67.74 and manifest["package_version"]
    assert manifest["input"]["usmesh"] == str(usmesh) and manifest["input"]["nrows"] == sum(
        r["rows"] for r in reference.values())
    qc = json.loads((tmp_path / "mass_sheets" / "qc.json").read_text())
    assert qc["status"] in ("ok", "warnings") and qc["failures"] == []
    assert qc["checks"]["conservation"] and qc["checks"]["finite"] and qc["checks"]["rows_match_offsets"]
    assert qc["totals"]["row_mass"] == pytest.approx(total_mass, rel=1e-12)
    assert qc["totals"]["conservation_rel_error"] < 1e-6


def test_particle_route_equals_healpix_route(usmesh, tmp_path):
    run(usmesh, tmp_path / "healpix")
    run(usmesh, tmp_path / "particles", dataset="particles", nside_out=NSIDE, chunk_size=997)
    run(usmesh, tmp_path / "coarse", dataset="particles", nside_out=NSIDE // 2)
    aemit = bigfile.File(str(usmesh))["1/Aemit"][:]
    particle_slices = (aemit * np.float32(100)).astype(np.int64)  # FastPM's float32 slice rule
    healpix_files = sheet_files(tmp_path / "healpix")
    assert [f.name for f in sheet_files(tmp_path / "particles")] == [f.name for f in healpix_files]
    for path in healpix_files:
        from_ids, header = read_nested_map(path)
        from_particles, particle_header = read_nested_map(tmp_path / "particles" / "mass_sheets" / path.name)
        coarse, _ = read_nested_map(tmp_path / "coarse" / "mass_sheets" / path.name)
        per_particle = header["RHOBAR"] * 4 * np.pi * (header["CHI_FAR"] ** 3 - header["CHI_NEAR"] ** 3) / (
            3 * from_ids.size) / bigfile.File(str(usmesh))["Header"].attrs["MassTable"][1]
        # the same particle count in every pixel (HEALPIX Mass is float32(count * m): compare counts)
        np.testing.assert_array_equal(np.rint((from_ids + 1) * per_particle), np.rint((from_particles + 1) * per_particle))
        np.testing.assert_allclose(from_particles + 1, from_ids + 1, rtol=1e-6, atol=0)
        assert particle_header["NPART"] == np.count_nonzero(particle_slices == header["SHEET"])
        # nside_out 16: every coarse pixel holds the mass of its 4 NEST children
        np.testing.assert_allclose(coarse + 1, (from_particles + 1).reshape(-1, 4).mean(axis=1), rtol=1e-6)


def test_blockwise_overdensity_has_the_bits_of_the_science_function():
    for nside in (1, 128, 256):  # one partial block, exactly 3 blocks, 12 blocks
        npix = 12 * nside**2
        mass = np.random.default_rng(nside).gamma(0.5, 3.0, npix) * (np.arange(npix) % 7 > 0)
        expected = overdensity(mass, npix, 3396.0, 3297.3, 8.57).astype(np.float32)
        np.testing.assert_array_equal(preprocessing_steps.overdensity_float32(mass, 3396.0, 3297.3, 8.57), expected)


@pytest.mark.parametrize("dataset", ["HEALPIX", "particles"])
def test_chunk_size_does_not_change_the_bytes(usmesh, tmp_path, dataset):
    run(usmesh, tmp_path / "small", dataset=dataset, chunk_size=1000)
    run(usmesh, tmp_path / "large", dataset=dataset, chunk_size=10**7)
    small, large = sheet_files(tmp_path / "small"), sheet_files(tmp_path / "large")
    assert [f.name for f in small] == [f.name for f in large] and small
    for a, b in zip(small, large):
        assert a.read_bytes() == b.read_bytes()


def test_existing_sheets_reused_overwrite_and_changed_cosmology_recompute(usmesh, tmp_path):
    run(usmesh, tmp_path)
    files = sheet_files(tmp_path)
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    directory = tmp_path / "mass_sheets"
    records = {name: (directory / name).stat().st_mtime_ns for name in ("qc.json", "manifest.json", "footprint.fits")}
    # a complete stage (manifest, config, usmesh and files unchanged) is skipped: no task, nothing rewritten
    again = run(usmesh, tmp_path)
    assert (again.tasks_done, again.tasks_skipped) == (0, 0)
    assert {name: (directory / name).stat().st_mtime_ns for name in records} == records
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == before
    # without the manifest (a kill after the last sheet), or with a sheet touched since, the sheets are
    # checked one by one and reused, not rewritten
    for change in (lambda: (directory / "manifest.json").unlink(), lambda: os.utime(files[0])):
        change()
        again = run(usmesh, tmp_path)
        assert again.tasks_done == len(files)
        assert {f: f.read_bytes() for f in files} == {f: content for f, (_, content) in before.items()}
        qc = json.loads((directory / "qc.json").read_text())
        assert all(s["reused"] for s in qc["sheets"]) and qc["checks"]["conservation"]
    run(usmesh, tmp_path, overwrite=True)
    assert all(f.stat().st_mtime_ns > before[f][0] and f.read_bytes() == before[f][1] for f in files)
    config = make_config(usmesh, tmp_path)
    config.cosmology.H0 = 70.0
    assert PreprocessingPipeline(config).execute().success
    assert all(read_header(f)["H0"] == 70.0 and f.read_bytes() != before[f][1] for f in files)


def test_real_fastpm_fixture(tmp_path):
    result = run(FULLSKY, tmp_path, sheet_range=[20, 100])
    files = sheet_files(tmp_path)
    assert [int(f.stem[-2:]) for f in files] == list(range(40, 99))  # the non-empty slices of the real run
    assert result.tasks_done == len(files)
    header = read_header(files[4])  # sheet 44: split across two light-cone events (duplicated IDs)
    assert header["SHEET"] == 44 and header["NROWS"] == 24 and header["MOCK"] is False and "SEED" not in header
    delta, _ = read_nested_map(files[4])
    assert np.count_nonzero(delta > -1) == 12  # the 12 nside-32 pixels of the subset, duplicates summed
    qc = json.loads((tmp_path / "mass_sheets" / "qc.json").read_text())
    assert qc["checks"]["conservation"] and not any(s["full_sky"] for s in qc["sheets"])
    # particles of the cone10 run at nside 256, checked against its HEALPIX block (float32 slice rule at 69)
    run(CONE10, tmp_path / "cone", dataset="particles", nside_out=256, sheet_range=[68, 71])
    route = json.loads((tmp_path / "cone" / "mass_sheets" / "manifest.json").read_text())["route"]
    assert route["check"].startswith("particles agree with the HEALPIX block")
    assert read_header(tmp_path / "cone" / "mass_sheets" / "delta-sheet-69.fits")["SEED"] == 100  # ParamFile


def _del_attr(path, block, name):
    column = bigfile.File(str(path))[block]
    column.attrs[name] = column.attrs[name]  # bigfile writes attrs back only once one was set
    del column.attrs[name]
    column.close()


def assert_no_outputs(output_dir):
    assert not list(output_dir.rglob("*.fits")) and not list(output_dir.rglob("manifest.json"))


def test_bad_inputs_name_the_path_or_key(usmesh, tmp_path):
    out = tmp_path / "out"
    cases = [
        (tmp_path / "missing", {}, InputError, ["missing", "not found", "data_dir"]),
        (tmp_path, {}, InputError, [str(tmp_path), "Header"]),  # a directory that is not a usmesh
        (tmp_path / "junk.txt", {}, InputError, ["junk.txt", "not a directory", "data_dir"]),
        (usmesh, {"sheet_range": [0, 10]}, InputError, [str(usmesh), "preprocessing.sheet_range"]),
        (usmesh, {"nside_out": 16}, ConfigError, ["preprocessing.nside_out", "HEALPIX"]),
        (usmesh, {"nside_out": 12, "dataset": "particles"}, ConfigError, ["preprocessing.nside_out", "power of two"]),
        (usmesh, {"dataset": "particles", "observer": [50.0, 0.0, 0.0]}, InputError,
         ["preprocessing.observer", "disagree"]),
    ]
    (tmp_path / "junk.txt").write_text("not a BigFile")
    for path, settings, error, words in cases:
        with pytest.raises(error) as raised:
            PreprocessingPipeline(make_config(path, out, **settings)).execute()
        for word in words:
            assert word in str(raised.value), (word, str(raised.value))
        assert_no_outputs(out)
    broken = tmp_path / "broken" / "usmesh"
    shutil.copytree(FULLSKY, broken)
    _del_attr(broken, "HEALPIX", "aemitIndex.offset")
    with pytest.raises(InputError, match=r"broken/usmesh.*aemitIndex\.offset"):
        PreprocessingPipeline(make_config(broken, out)).execute()
    with pytest.raises(ConfigError, match="data_dir"):
        PreprocessingPipeline(ProcessingConfig(output_dir=str(out))).execute()
    assert_no_outputs(out)


def test_failed_conservation_is_an_error_when_strict(usmesh, tmp_path, monkeypatch):
    original = preprocessing_steps.overdensity_float32

    def lossy(mass, *args):  # a bug that loses 0.1% of the mass
        return original(mass * 0.999, *args)

    monkeypatch.setattr(preprocessing_steps, "overdensity_float32", lossy)
    with pytest.raises(ValidationError, match="qc.json.*conservation|differs from the rows' Mass"):
        PreprocessingPipeline(make_config(usmesh, tmp_path / "strict")).execute()
    qc = json.loads((tmp_path / "strict" / "mass_sheets" / "qc.json").read_text())
    assert qc["status"] == "failed" and not qc["checks"]["conservation"]
    assert not (tmp_path / "strict" / "mass_sheets" / "manifest.json").exists()
    run(usmesh, tmp_path / "lenient", validation_level="lenient")  # only a warning
    assert json.loads((tmp_path / "lenient" / "mass_sheets" / "manifest.json").read_text())["qc"]["status"] == "failed"


# ---------------------------------------------------------------------------------------------
# MockPipeline

def mock_config(tmp_path, **mock):
    return ProcessingConfig(data_dir=str(tmp_path / "usmesh"), output_dir=str(tmp_path),
                            mock={"enabled": True, **TINY_MOCK, **mock}, pipeline={"memory_monitoring": False})


def test_mock_written_kept_replaced_and_preprocessed(tmp_path):
    config = mock_config(tmp_path)
    first = MockPipeline(config).execute()
    assert first.success and first.data["mock"]["written"] and first.outputs == [str(tmp_path / "usmesh")]
    column = tmp_path / "usmesh" / "HEALPIX" / "ID" / "000001"
    stamp = column.stat().st_mtime_ns
    record = json.loads((tmp_path / "usmesh" / MOCK_RECORD).read_text())
    assert record["parameters"]["nside"] == TINY_MOCK["nside"] and record["parameters"]["omega_m"] == 0.309
    assert not MockPipeline(config).execute().data["mock"]["written"]  # same parameters: kept
    assert column.stat().st_mtime_ns == stamp
    config.preprocessing.overwrite = True
    assert MockPipeline(config).execute().data["mock"]["written"]
    changed = mock_config(tmp_path, seed=4)
    assert MockPipeline(changed).execute().data["mock"]["written"]
    assert json.loads((tmp_path / "usmesh" / MOCK_RECORD).read_text())["parameters"]["seed"] == 4
    changed.preprocessing.sheet_range = [0, 100]
    assert PreprocessingPipeline(changed).execute().success
    header = read_header(sheet_files(tmp_path)[-1])
    assert header["MOCK"] is True and header["SEED"] == 4 and header["NSIDE"] == TINY_MOCK["nside"]


def test_mock_refuses_to_replace_real_data_and_disabled_does_nothing(tmp_path):
    real = tmp_path / "usmesh"
    shutil.copytree(FULLSKY, real)
    with pytest.raises(InputError, match=r"usmesh.*not a lensing_ssc mock"):
        MockPipeline(mock_config(tmp_path)).execute()
    assert (real / "HEALPIX" / "ID").is_dir() and not (real / MOCK_RECORD).exists()
    disabled = mock_config(tmp_path / "off", enabled=False)
    assert MockPipeline(disabled).execute().outputs == [] and not (tmp_path / "off").exists()
    with pytest.raises(ConfigError, match="data_dir"):
        MockPipeline(ProcessingConfig(output_dir=str(tmp_path), mock={"enabled": True})).execute()
    with pytest.raises(ConfigError, match="mock: nevents"):
        MockPipeline(mock_config(tmp_path / "bad", nevents=500)).execute()


def test_demo_config_is_valid_and_self_contained():
    config = ProcessingConfig.from_yaml(REPO / "configs" / "demo.yaml")
    assert config.mock.enabled and config.data_dir == "demo_output/usmesh" and config.output_dir == "demo_output"
    assert config.preprocessing.sheet_range == [0, 100] and hp.isnsideok(config.mock.nside, nest=True)
