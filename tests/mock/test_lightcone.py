"""Tests of lensing_ssc.mock.lightcone: layout identical to real FastPM, round trip through the reader,
conservation, particle route == HEALPIX route, P(k) of the density grid, growth along the light cone."""
import inspect
import json
import os

import bigfile
import numpy as np
import pytest
from astropy.cosmology import FlatLambdaCDM

from lensing_ssc.io.usmesh import UsmeshCatalog
from lensing_ssc.mock.lightcone import density_grid, mock_config_defaults, write_mock_lightcone
from lensing_ssc.science.linear_power import linear_growth_factor, linear_power_spectrum

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data")
OMEGA_M, H = 0.309, 0.6774
SMALL = {"nside": 32, "box_size": 200.0, "nc": 16, "z_max": 0.2, "nslices": 100, "seed": 7,
         "particles_per_cell": 1.0, "nevents": 3, "with_particles": True}
OBSERVERS = [(0.0, 0.0, 0.0), (13.0, -40.0, 71.5)]


@pytest.fixture(scope="module", params=OBSERVERS, ids=["origin", "offset"])
def mock(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("mock") / "usmesh")
    summary = write_mock_lightcone(path, **{**mock_config_defaults(), **SMALL}, observer=request.param)
    return path, summary, request.param


def _attr_file(path):
    """attr-v2 text -> {name: (dtype, count)} (on-disk truth, as stored in the JSON summary)."""
    with open(os.path.join(path, "attr-v2")) as handle:
        return {line.split()[0]: (line.split()[1], int(line.split()[2])) for line in handle}


def _block_header(path):
    with open(os.path.join(path, "header")) as handle:
        lines = handle.read().splitlines()
    return lines[0].split(":")[1].strip(), int(lines[1].split(":")[1]), int(lines[2].split(":")[1])


def test_layout_matches_real_fastpm(mock):
    path, _, _ = mock
    with open(os.path.join(DATA, "fastpm_usmesh_structure.json")) as handle:
        real = json.load(handle)["cone10"]
    assert sorted(os.listdir(path)) == sorted(real)
    for block, spec in real.items():
        dtype, nmemb, nfile = _block_header(os.path.join(path, block))
        assert (dtype, nmemb, nfile) == (spec["dtype"], spec["nmemb"], spec["nfile"]), block
        mine = _attr_file(os.path.join(path, block))
        for name, (real_dtype, real_count) in spec["attrs"].items():
            assert name in mine, f"{block}/{name} missing"
            assert mine[name][0] == real_dtype, f"{block}/{name} dtype"
            if real_dtype != "<S1":  # string lengths differ
                assert mine[name][1] == real_count, f"{block}/{name} count"
        if block != "Header":
            assert set(mine) == set(spec["attrs"]), block
        else:
            assert set(mine) - set(spec["attrs"]) == {"seed"}
        for column, cspec in spec["columns"].items():
            dtype, nmemb, nfile = _block_header(os.path.join(path, block, column))
            assert (dtype, nmemb) == (cspec["dtype"], cspec["nmemb"]), f"{block}/{column}"
            assert nfile == 1 + SMALL["nevents"]
        assert sorted(bigfile.File(os.path.join(path, block)).blocks) == sorted(spec["columns"])
    with open(os.path.join(path, "HEALPIX", "attr-v2")) as handle:
        assert "healpix.scheme <S1 5 52494E4700" in handle.read()  # "RING\0", as FastPM


def test_round_trip_metadata(mock):
    path, summary, observer = mock
    for dataset in ("HEALPIX", "particles"):
        catalog = UsmeshCatalog(path, dataset=dataset, nside_out=SMALL["nside"], observer=observer)
        assert catalog.validate() == []
        assert catalog.seed == SMALL["seed"]
        assert catalog.nside == SMALL["nside"] and catalog.nslices == SMALL["nslices"]
        assert catalog.nc == 16 and catalog.box_size == SMALL["box_size"]
        assert (catalog.omega_m, catalog.hubble_param) == (OMEGA_M, H)
        assert catalog.particle_mass == pytest.approx(27.7455 * OMEGA_M * (200.0 / 16) ** 3)
    assert catalog.nrows == summary["n_particles"]
    assert UsmeshCatalog(path).nrows == summary["nrows"]


def test_rows_follow_fastpm_conventions(mock):
    path, _, observer = mock
    f = bigfile.File(path)
    catalog = UsmeshCatalog(path)
    npix, offsets = catalog.npix, catalog.offsets
    ids, aemit = f["HEALPIX/ID"][:], f["HEALPIX/Aemit"][:]
    slices = ids // npix
    assert np.all(np.diff(slices) >= 0)
    for i in range(catalog.nslices):
        assert np.all(slices[offsets[i + 1]:offsets[i + 2]] == i)
    assert aemit.dtype == np.float32
    np.testing.assert_array_equal(aemit, ((slices + 0.5) / 100).astype(np.float32))
    # a slice split by each event boundary -> duplicated IDs (as in the real fullsky run)
    assert ids.size - np.unique(ids).size > 0
    restarts = np.r_[False, np.diff(ids) <= 0]  # ID order restarts where a new event begins in a slice
    assert np.unique(slices[restarts]).size == SMALL["nevents"] - 1
    # particles: |Position - observer| = chi(Aemit) and chi < chi(z_max)
    position = f["1/Position"][:].astype(np.float64) - observer
    chi = np.linalg.norm(position, axis=1)
    cosmology = FlatLambdaCDM(H0=100 * H, Om0=OMEGA_M, Tcmb0=0)
    p_aemit = f["1/Aemit"][:]
    assert np.all(np.diff(p_aemit) >= 0)
    np.testing.assert_allclose(cosmology.comoving_distance(1 / p_aemit.astype("f8") - 1).value * H, chi,
                               atol=0.05)
    assert chi.max() < cosmology.comoving_distance(SMALL["z_max"]).value * H


def test_mass_conservation(mock):
    path, summary, _ = mock
    f = bigfile.File(path)
    m0 = UsmeshCatalog(path, dataset="particles").particle_mass
    assert summary["particle_mass"] == pytest.approx(m0)
    assert f["1/ID"].size == summary["n_particles"]
    counts = f["HEALPIX/Mass"][:].astype(np.float64) / m0
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # whole particles per row
    assert np.round(counts).sum() == summary["n_particles"]
    assert counts.sum() == pytest.approx(summary["n_particles"], rel=1e-6)  # float32 Mass column


def test_particle_route_equals_healpix_route(mock):
    path, _, observer = mock
    healpix = UsmeshCatalog(path)
    particles = UsmeshCatalog(path, dataset="particles", nside_out=SMALL["nside"], observer=observer)
    np.testing.assert_array_equal(healpix.nonempty_slices(), particles.nonempty_slices())
    for i in healpix.nonempty_slices():
        maps = []
        for catalog in (healpix, particles):
            total = np.zeros(healpix.npix)
            for ipix, mass in catalog.iter_slice_chunks(i, 5000):
                total += np.bincount(ipix, weights=mass, minlength=healpix.npix)
            maps.append(total)
        np.testing.assert_allclose(maps[1], maps[0], rtol=1e-6, atol=0)


def test_mean_density_matches_header(mock):
    path, summary, _ = mock
    catalog = UsmeshCatalog(path)
    volume = 4.0 / 3.0 * np.pi * summary["chi_max"] ** 3
    expected = (catalog.nc / catalog.box_size) ** 3 * volume
    assert summary["n_particles"] == pytest.approx(expected, rel=0.03)


def test_reproducible_and_seed_dependent(tmp_path):
    small = {**SMALL, "nside": 16, "z_max": 0.1, "with_particles": False}
    outputs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_mock_lightcone(str(tmp_path / name), **{**small, "seed": seed})
        outputs.append(bigfile.File(str(tmp_path / name))["HEALPIX/Mass"][:])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert outputs[0].shape != outputs[2].shape or np.any(outputs[0] != outputs[2])
    assert not os.path.exists(str(tmp_path / "a") + ".inprogress")
    assert "1" not in bigfile.File(str(tmp_path / "a")).blocks


def _measured_power(delta, box_size):
    nc = delta.shape[0]
    modes = np.fft.rfftn(delta) * (box_size / nc) ** 3
    power = np.abs(modes) ** 2 / box_size ** 3
    kx = 2 * np.pi * np.fft.fftfreq(nc, d=box_size / nc)
    kz = 2 * np.pi * np.fft.rfftfreq(nc, d=box_size / nc)
    kmag = np.sqrt(kx[:, None, None] ** 2 + kx[None, :, None] ** 2 + kz[None, None, :] ** 2)
    return kmag, power


@pytest.mark.parametrize("field,box_size,tolerance", [("gaussian", 2000.0, 0.08), ("lognormal", 300.0, 0.12)])
def test_density_grid_has_linear_power(field, box_size, tolerance):
    """Shells k in [3, 8) and [8, 16) fundamental modes (~1000 and ~7500 modes). The Gaussian field is
    tested where sigma_cell ~ 0.2 (clipping negligible); the lognormal one where sigma_cell ~ 1."""
    nc = 32
    density = density_grid(nc, box_size, field, np.random.default_rng(1), OMEGA_M, H, 0.8159)
    assert density.mean() == pytest.approx(1.0) and density.min() >= 0.0
    kmag, power = _measured_power(density - 1.0, box_size)
    edges = 2 * np.pi / box_size * np.array([3, 8, 16])
    for lo, hi in zip(edges[:-1], edges[1:]):
        shell = (kmag >= lo) & (kmag < hi)
        expected = linear_power_spectrum(kmag[shell], 0.0, omega_m=OMEGA_M, h=H).mean()
        assert power[shell].mean() == pytest.approx(expected, rel=tolerance)


def test_growth_applied_per_particle(tmp_path):
    """Each box cell c (z=0 contrast delta_c) is replicated at all distances; its particles in a shell
    number ~ V_shell (1 + D_shell delta_c). The far/near count ratio per cell cancels the Poisson
    sample (shared by all replicas) and must follow (V_far/V_near)(1 + D_far delta)/(1 + D_near delta)
    with D the volume-weighted linear growth of each shell (0.87 near, 0.63 far); no growth would give a
    constant ratio."""
    params = {"nside": 8, "box_size": 200.0, "nc": 4, "z_max": 1.0, "seed": 12, "field": "lognormal",
              "sigma8": 2.5, "particles_per_cell": 1.0, "nevents": 1, "with_particles": True}
    path = str(tmp_path / "usmesh")
    write_mock_lightcone(path, **params)
    # the mock's z=0 field: first child of SeedSequence(seed) (lensing_ssc.mock.lightcone)
    field_seed = np.random.SeedSequence(params["seed"]).spawn(2)[0]
    delta = density_grid(4, 200.0, "lognormal", np.random.default_rng(field_seed), OMEGA_M, H, 2.5).ravel() - 1
    f = bigfile.File(path)
    position = f["1/Position"][:].astype(np.float64)
    chi = np.linalg.norm(position, axis=1)
    cell = np.ravel_multi_index(tuple((np.mod(position, 200.0) // 50.0).astype(int).T), (4, 4, 4))
    cosmology = FlatLambdaCDM(H0=100 * H, Om0=OMEGA_M, Tcmb0=0)
    z_grid = np.linspace(0, 1.0, 1001)
    chi_grid = cosmology.comoving_distance(z_grid).value * H
    counts, growth, volume = [], [], []
    for lo, hi in ((0.0, 1000.0), (2000.0, chi_grid[-1])):
        shell = (chi >= lo) & (chi < hi)
        counts.append(np.bincount(cell[shell], minlength=64))
        r = np.linspace(lo, hi, 500)
        d_of_r = linear_growth_factor(1 / (1 + np.interp(r, chi_grid, z_grid)), OMEGA_M)
        growth.append(np.sum(d_of_r * r ** 2) / np.sum(r ** 2))
        volume.append(hi ** 3 - lo ** 3)
    used = counts[0] > 0
    ratio = counts[1][used] / counts[0][used] * volume[0] / volume[1]
    error = ratio * np.sqrt(1 / counts[0][used] + 1 / counts[1][used])
    d = delta[used]
    predicted = (1 + growth[1] * d) / (1 + growth[0] * d)
    chi2 = np.sum(((ratio - predicted) / error) ** 2)
    chi2_no_growth = np.sum(((ratio - 1.0) / error) ** 2)
    assert used.sum() > 30
    assert chi2 < 2 * used.sum()
    assert chi2_no_growth > 10 * chi2


def test_bad_arguments(tmp_path):
    path = str(tmp_path / "usmesh")
    for bad, match in (({"nside": 24}, "nside"), ({"particles_per_cell": 0.3}, "particles_per_cell"),
                       ({"field": "uniform"}, "field"), ({"z_max": 0.0}, "z_max"),
                       ({"observer": (0, 0)}, "observer"), ({"nevents": 200}, "nevents")):
        with pytest.raises(ValueError, match=match):
            write_mock_lightcone(path, **{**SMALL, "with_particles": False, **bad})
    write_mock_lightcone(path, **{**SMALL, "nside": 8, "z_max": 0.05, "with_particles": False})
    with pytest.raises(ValueError, match="exists"):
        write_mock_lightcone(path, **{**SMALL, "nside": 8, "z_max": 0.05, "with_particles": False})
    write_mock_lightcone(path, **{**SMALL, "nside": 8, "z_max": 0.05, "with_particles": False}, overwrite=True)
    os.makedirs(tmp_path / "other")
    with pytest.raises(ValueError, match="not a usmesh"):
        write_mock_lightcone(str(tmp_path / "other"), **SMALL, overwrite=True)


def test_defaults_are_accepted_keywords():
    defaults = mock_config_defaults()
    assert defaults["nside"] == 128 and defaults["z_max"] == 1.5
    assert set(defaults) <= set(inspect.signature(write_mock_lightcone).parameters)
