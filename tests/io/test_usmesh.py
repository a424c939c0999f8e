"""Tests of lensing_ssc.io.usmesh on small subsets of REAL FastPM output (tests/data/README.md)."""
import os
import shutil

import bigfile
import healpy as hp
import numpy as np
import pytest

from lensing_ssc.io.usmesh import UsmeshCatalog, UsmeshError

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data")
FULLSKY = os.path.join(DATA, "fastpm_fullsky_subset", "usmesh")
CONE10 = os.path.join(DATA, "fastpm_cone10_subset", "usmesh")
# nside-32 NEST pixels fully inside the 10-deg cone (the fullsky subset holds exactly these)
CONE_PIXELS_NSIDE32 = [1021, 1022, 1023, 2045, 2046, 2047, 3069, 3070, 3071, 4093, 4094, 4095]
STRADDLING_SLICES = [44, 50, 59]  # split across light-cone events in the fullsky run


def _slice_map(catalog, i, npix=None, chunk_size=10 ** 6, margin=0):
    npix = npix or catalog.npix
    total = np.zeros(npix)
    for ipix, mass in catalog.iter_slice_chunks(i, chunk_size, margin=margin):
        total += np.bincount(ipix, weights=mass, minlength=npix)
    return total


@pytest.fixture
def fullsky_copy(tmp_path):
    target = tmp_path / "copy" / "usmesh"
    shutil.copytree(FULLSKY, target)
    return str(target)


def test_real_metadata():
    catalog = UsmeshCatalog(FULLSKY)
    assert catalog.validate() == []
    assert (catalog.npix, catalog.nside, catalog.nslices) == (12288, 32, 100)
    assert catalog.box_size == 512.0 and catalog.nc == 64
    assert catalog.particle_mass == pytest.approx(4388.1394944)
    assert (catalog.omega_m, catalog.hubble_param) == (0.3089, 0.6774)
    assert catalog.columns == ["Aemit", "ID", "Mass", "Rmom"]
    np.testing.assert_allclose(catalog.aemit_edges, np.linspace(0, 1, 101), atol=1e-15)
    attrs = catalog.attrs
    assert attrs["healpix.scheme"] == "RING"  # FastPM's (wrong) label, read as NEST anyway
    assert isinstance(attrs["BoxSize"], float) and attrs["MassTable"].shape == (6,)
    assert attrs["LibFastPMVersion"] == "1.0.15b6c4fd75"
    assert catalog.rows_per_slice().sum() == catalog.nrows
    assert catalog.nonempty_slices()[0] == 40


def test_seed_from_paramfile_when_no_seed_attr():
    catalog = UsmeshCatalog(CONE10)
    assert "seed" not in catalog.attrs
    assert "random_seed = 100" in catalog.attrs["ParamFile"]
    assert catalog.seed == 100


def test_seed_from_directory_name_then_none(tmp_path):
    # the fullsky subset has neither a seed attr nor a ParamFile
    named = tmp_path / "rfof_nc64_size512_s123_dhf1.0000" / "usmesh"
    shutil.copytree(FULLSKY, named)
    assert UsmeshCatalog(str(named)).seed == 123
    plain = tmp_path / "plain" / "usmesh"
    shutil.copytree(FULLSKY, plain)
    assert UsmeshCatalog(str(plain)).seed is None


def test_duplicated_ids_across_events_are_summed():
    """fullsky slices 44/50/59 are split over two events (same IDs twice); after summing they equal the
    cone10 run (one event, nside 256) summed over the NEST children of each nside-32 pixel."""
    fullsky = UsmeshCatalog(FULLSKY)
    cone = UsmeshCatalog(CONE10)
    for i in STRADDLING_SLICES:
        ipix = np.concatenate([p for p, _ in fullsky.iter_slice_chunks(i, 50)])
        assert np.unique(ipix).size < ipix.size, f"slice {i} should hold duplicated IDs"
        coarse = _slice_map(fullsky, i)[CONE_PIXELS_NSIDE32]
        fine = _slice_map(cone, i)
        from_children = np.bincount(np.arange(fine.size) // 64, weights=fine, minlength=12288)
        np.testing.assert_allclose(coarse, from_children[CONE_PIXELS_NSIDE32], rtol=1e-4)


def test_particle_route_equals_healpix_route_on_real_rows():
    healpix = UsmeshCatalog(CONE10)
    particles = UsmeshCatalog(CONE10, dataset="particles", nside_out=256)
    assert particles.validate() == []
    assert particles.particle_mass == pytest.approx(4388.1394944)
    assert particles.nside == 256 and UsmeshCatalog(CONE10, dataset="particles").nside == 256
    # the subset keeps all particles of 4 pixels (and their HEALPIX rows in every slice)
    pixels = np.unique(np.concatenate([p for i in particles.nonempty_slices()
                                       for p, _ in particles.iter_slice_chunks(i, 300)]))
    assert pixels.size == 4
    for i in range(particles.nslices):
        from_particles = _slice_map(particles, i, chunk_size=97)[pixels]
        from_healpix = _slice_map(healpix, i)[pixels]
        np.testing.assert_allclose(from_particles, from_healpix, rtol=1e-6, atol=0)


def test_float32_slice_rule_on_real_particle():
    """README: float64 floor(Aemit*100) moves one real particle (Aemit = float32(0.69)) to slice 68."""
    f = bigfile.File(CONE10)
    aemit = f["1/Aemit"][:]
    odd = np.flatnonzero((aemit * np.float32(100)).astype(int) != np.floor(aemit.astype("f8") * 100))
    assert odd.size == 1 and aemit[odd[0]] == np.float32(0.69)
    position = f["1/Position"][odd[0]].astype("f8")
    pixel = hp.vec2pix(256, *position, nest=True)
    particles = UsmeshCatalog(CONE10, dataset="particles", nside_out=256)
    healpix = UsmeshCatalog(CONE10)
    in_69 = _slice_map(particles, 69)[pixel]
    assert in_69 == pytest.approx(_slice_map(healpix, 69)[pixel], rel=1e-6)
    # with the float64 rule that pixel would be one particle short in slice 69
    assert in_69 - particles.particle_mass == pytest.approx(
        particles.particle_mass * np.sum(
            (np.floor(aemit.astype("f8") * 100) == 69)
            & (hp.vec2pix(256, *f["1/Position"][:].astype("f8").T, nest=True) == pixel)))


def test_chunking_and_margin_do_not_change_the_sheet():
    catalog = UsmeshCatalog(FULLSKY)
    for i in (40, 44, 98):
        reference = _slice_map(catalog, i)
        np.testing.assert_array_equal(_slice_map(catalog, i, chunk_size=7), reference)
        np.testing.assert_array_equal(_slice_map(catalog, i, margin=25), reference)
        start, stop = catalog.slice_row_range(i)
        assert reference.sum() == pytest.approx(
            bigfile.File(FULLSKY)["HEALPIX/Mass"][start:stop].astype("f8").sum())
    assert catalog.slice_row_range(40, margin=10 ** 6) == (0, catalog.nrows)
    assert sum(m.size for _, m in catalog.iter_slice_chunks(10, 100)) == 0  # empty slice
    with pytest.raises(ValueError, match="slice index"):
        catalog.slice_row_range(100)
    with pytest.raises(ValueError, match="chunk_size"):
        next(catalog.iter_slice_chunks(44, 0))


def _set_attr(path, block, name, value):
    column = bigfile.File(path)[block]
    column.attrs[name] = value
    column.close()


def _del_attr(path, block, name):
    column = bigfile.File(path)[block]
    column.attrs[name] = column.attrs[name]  # bigfile writes attrs back only once one was set
    del column.attrs[name]
    column.close()


def test_missing_attr_raises_naming_attr_and_path(fullsky_copy):
    _del_attr(fullsky_copy, "HEALPIX", "healpix.npix")
    catalog = UsmeshCatalog(fullsky_copy)
    with pytest.raises(UsmeshError, match="healpix.npix") as error:
        catalog.nside
    assert fullsky_copy in str(error.value)
    assert any("healpix.npix" in p for p in catalog.validate())
    _del_attr(fullsky_copy, "Header", "MassTable")
    with pytest.raises(UsmeshError, match="MassTable"):
        UsmeshCatalog(fullsky_copy).particle_mass


@pytest.mark.parametrize("npix", [1000, 12 * 3 ** 2])
def test_npix_not_12_nside2_power_of_two(fullsky_copy, npix):
    _set_attr(fullsky_copy, "HEALPIX", "healpix.npix", np.array([npix]))
    catalog = UsmeshCatalog(fullsky_copy)
    with pytest.raises(UsmeshError, match="healpix.npix") as error:
        catalog.nside
    assert fullsky_copy in str(error.value)
    assert catalog.validate()


def test_non_monotonic_edges(fullsky_copy):
    edges = np.linspace(0, 1, 101)
    edges[[50, 51]] = edges[[51, 50]]
    _set_attr(fullsky_copy, "HEALPIX", "aemitIndex.edges", edges)
    catalog = UsmeshCatalog(fullsky_copy)
    with pytest.raises(UsmeshError, match="aemitIndex.edges") as error:
        catalog.aemit_edges
    assert fullsky_copy in str(error.value)
    assert any("aemitIndex.edges" in p for p in catalog.validate())


def test_edges_length_must_match_nslices(fullsky_copy):
    _set_attr(fullsky_copy, "HEALPIX", "aemitIndex.edges", np.linspace(0, 1, 51))
    with pytest.raises(UsmeshError, match="healpix.nslices"):
        UsmeshCatalog(fullsky_copy).nslices


def test_offsets_past_nrows(fullsky_copy):
    offsets = UsmeshCatalog(fullsky_copy).offsets.copy()
    offsets[-1] += 10
    _set_attr(fullsky_copy, "HEALPIX", "aemitIndex.offset", offsets)
    catalog = UsmeshCatalog(fullsky_copy)
    with pytest.raises(UsmeshError, match="aemitIndex.offset") as error:
        catalog.slice_row_range(50)
    assert fullsky_copy in str(error.value) and "rows" in str(error.value)
    assert any("aemitIndex.offset" in p for p in catalog.validate())


def test_decreasing_offsets(fullsky_copy):
    offsets = UsmeshCatalog(fullsky_copy).offsets.copy()
    offsets[50] = offsets[51] + 1
    _set_attr(fullsky_copy, "HEALPIX", "aemitIndex.offset", offsets)
    with pytest.raises(UsmeshError, match="non-decreasing"):
        UsmeshCatalog(fullsky_copy).offsets


def test_offsets_inconsistent_with_rows_are_detected(fullsky_copy):
    reference = _slice_map(UsmeshCatalog(FULLSKY), 60)
    offsets = UsmeshCatalog(fullsky_copy).offsets.copy()
    offsets[62] -= 1  # last row of slice 60 now nominally belongs to slice 61
    _set_attr(fullsky_copy, "HEALPIX", "aemitIndex.offset", offsets)
    catalog = UsmeshCatalog(fullsky_copy)
    with pytest.raises(UsmeshError, match="increase margin"):
        _slice_map(catalog, 60)
    np.testing.assert_array_equal(_slice_map(catalog, 60, margin=1), reference)


def test_missing_block_column_and_bad_path(fullsky_copy, tmp_path):
    with pytest.raises(UsmeshError, match="'1/'"):
        UsmeshCatalog(fullsky_copy, dataset="particles")
    shutil.rmtree(os.path.join(fullsky_copy, "HEALPIX", "Mass"))
    with pytest.raises(UsmeshError, match="'Mass'") as error:
        UsmeshCatalog(fullsky_copy)
    assert fullsky_copy in str(error.value)
    with pytest.raises(UsmeshError, match="not a directory"):
        UsmeshCatalog(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="dataset"):
        UsmeshCatalog(FULLSKY, dataset="RING")
    with pytest.raises(ValueError, match="observer"):
        UsmeshCatalog(FULLSKY, observer=(0, 0))


def test_usmesh_error_is_value_error():
    assert issubclass(UsmeshError, ValueError)


def test_sorted_id_runs_split_straddling_slices_into_their_events():
    catalog = UsmeshCatalog(FULLSKY)
    for i in catalog.nonempty_slices():
        runs = catalog.sorted_id_runs(i, chunk_size=700, margin=5)
        assert runs[0][0] == catalog.slice_row_range(i, 5)[0] and runs[-1][1] == catalog.slice_row_range(i, 5)[1]
        assert all(a[1] == b[0] for a, b in zip(runs[:-1], runs[1:]))
        assert len(runs) == (2 if i in STRADDLING_SLICES else 1), i
        pixels = [np.concatenate([p for p, _ in catalog.iter_run_pixels(i, run, 300)] or [np.zeros(0, int)])
                  for run in runs]
        assert all(np.all(np.diff(p) >= 0) for p in pixels)
        total = np.zeros(catalog.npix)
        for run in runs:
            for ipix, mass in catalog.iter_run_pixels(i, run, 300):
                assert mass.dtype == np.float32
                total += np.bincount(ipix, weights=mass, minlength=catalog.npix)
        np.testing.assert_array_equal(total, _slice_map(catalog, i))
    assert catalog.sorted_id_runs(STRADDLING_SLICES[0], chunk_size=700, max_runs=1) is None
    with pytest.raises(ValueError, match="only the HEALPIX dataset"):
        UsmeshCatalog(CONE10, dataset="particles").sorted_id_runs(60, 100)
