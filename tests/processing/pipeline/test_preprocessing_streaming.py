"""The delta sheet computed and written block by block: the same mean, reached bits, bincounts and file
bytes as the whole-map computation, and no file when a pixel is not finite."""
from pathlib import Path

import healpy as hp
import numpy as np
import pytest

from lensing_ssc.core.errors import InputError
from lensing_ssc.processing.steps import preprocessing_steps
from lensing_ssc.processing.steps.preprocessing_steps import (Float64Mean, PreprocessingPlan, SheetPlan, add_chunk,
                                                              add_region_mass, coarse_regions, make_sheet,
                                                              overdensity_float32)

BLOCK = preprocessing_steps._MASS_BLOCK


def blocks_of(values, size=BLOCK):
    return (values[start:start + size] for start in range(0, values.size, size))


def float64_mean(blocks, count):
    mean = Float64Mean()
    for block in blocks:
        mean.add(block)
    return mean.value(count)


def wide_range_float32(size, seed=0):
    """float32 values over 12 decades of both signs: their float64 sum depends on the summation order."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(size) * 10.0 ** rng.uniform(-3, 9, size)).astype(np.float32)


@pytest.mark.parametrize("size", [1, 8191, 8193, 3 * BLOCK, 3 * BLOCK + 5, 12 * 256**2])
def test_blockwise_mean_has_the_bits_of_numpy_mean(size):
    values = wide_range_float32(size, seed=size)
    assert float64_mean(blocks_of(values), size) == np.mean(values, dtype=np.float64)


def test_blockwise_mean_differs_from_other_summation_orders():
    # guards the test above: with these values, the order of the float64 additions shows in the bits
    values = wide_range_float32(12 * 256**2, seed=12 * 256**2)
    as_float64 = values.astype(np.float64)
    mean = np.mean(values, dtype=np.float64)
    assert np.cumsum(as_float64)[-1] / values.size != mean  # one by one
    assert np.add.reduce(as_float64) / values.size != mean  # pairwise over the whole array
    assert sum(block.sum() for block in blocks_of(as_float64)) / values.size != mean  # pairwise per block


def test_blockwise_mean_refuses_misaligned_blocks_and_wrong_counts():
    values = wide_range_float32(3 * BLOCK)
    with pytest.raises(ValueError, match="not a multiple of 8192"):
        float64_mean([values[:100], values[100:]], values.size)
    with pytest.raises(ValueError, match=f"hold {values.size} values; expected {values.size + 1}"):
        float64_mean(blocks_of(values), values.size + 1)


@pytest.mark.parametrize("nside", [1, 2, 128, 256])
def test_blocks_give_the_whole_map_delta_and_region_sums(nside):
    npix = 12 * nside**2
    mass = np.random.default_rng(nside).gamma(0.5, 3.0, npix) * (np.arange(npix) % 7 > 0)
    blocks = list(blocks_of(mass, size=1000 if nside > 2 else 7))  # blocks cut across the regions
    delta = np.concatenate([overdensity_float32(block, 3396.0, 3297.3, 8.57, npix) for block in blocks])
    np.testing.assert_array_equal(delta, overdensity_float32(mass, 3396.0, 3297.3, 8.57))
    regions = np.zeros(coarse_regions(npix))
    start = 0
    for block in blocks:
        add_region_mass(regions, block, start, npix)
        start += block.size
    np.testing.assert_allclose(regions, mass.reshape(regions.size, -1).sum(axis=1), rtol=1e-13)
    assert regions.size == (12 if nside == 1 else 48)


@pytest.mark.parametrize("weighted", [True, False])
def test_chunks_binned_range_by_range_give_the_bits_of_one_bincount(monkeypatch, weighted):
    rng = np.random.default_rng(5)
    npix = 12 * 64**2
    start_map = rng.gamma(0.5, 3.0, npix) if weighted else rng.integers(0, 5, npix)
    ipix = rng.integers(100, npix - 50, 200_000)  # many rows per pixel, in no order
    weights = wide_range_float32(ipix.size).astype(np.float64) if weighted else None
    expected = start_map.copy()
    expected[100:] += np.bincount(ipix - 100, weights=weights, minlength=npix - 100)
    monkeypatch.setattr(preprocessing_steps, "_BIN_SPAN", 1000)  # 49 ranges, several empty
    totals = start_map.copy()
    add_chunk(totals, ipix, weights)
    np.testing.assert_array_equal(totals, expected)
    totals = start_map.copy()
    add_chunk(totals, ipix[:10], None if weights is None else weights[:10])  # rows in a few ranges only
    expected = start_map.copy()
    np.add.at(expected, ipix[:10], 1 if weights is None else weights[:10])  # one row per pixel: same bits
    np.testing.assert_array_equal(totals, expected)


def make_plan(tmp_path, nside):
    sheet = SheetPlan(index=7, path=str(tmp_path / "mass_sheets" / "delta-sheet-07.fits"), a_far=0.7, a_near=0.71,
                      z_far=0.43, z_near=0.41, chi_far=1200.0, chi_near=1150.0, volume=4.0e9, nominal_rows=10)
    return PreprocessingPlan(usmesh=str(tmp_path / "usmesh"), dataset="HEALPIX", nside=nside, nslices=100,
                             edges=np.linspace(0, 1, 101), sheets=(sheet,), seed=4, mock=True, box_size=500.0,
                             nc=256, particle_mass=50.0, rhobar=85.0, observer=(0.0, 0.0, 0.0), H0=67.74,
                             Om0=0.309, identity={"nrows": 10}), sheet


def feed_mass(monkeypatch, mass, rows=10, row_mass=1.0):
    """make_sheet gets ``mass`` from sheet_mass_blocks, in blocks of BLOCK pixels."""
    def blocks(catalog, index, chunk_size, tally):
        tally.rows, tally.row_mass = rows, row_mass
        return blocks_of(mass)
    monkeypatch.setattr(preprocessing_steps, "sheet_mass_blocks", blocks)


def test_streamed_sheet_has_the_bytes_of_the_whole_map_write(tmp_path, monkeypatch):
    nside = 256  # 3 blocks
    plan, sheet = make_plan(tmp_path, nside)
    mass = np.random.default_rng(2).gamma(0.3, 5000.0, plan.npix) * (np.arange(plan.npix) % 5 > 0)
    feed_mass(monkeypatch, mass, row_mass=mass.sum())
    book = make_sheet(plan, None, sheet, chunk_size=1000)
    assert book["rows"] == 10 and book["row_mass"] == mass.sum()
    np.testing.assert_allclose(book["mass"], mass.sum(), rtol=1e-13)
    delta = overdensity_float32(mass, sheet.chi_far, sheet.chi_near, plan.rhobar)
    assert book["mean_delta"] == np.mean(delta, dtype=np.float64)  # what the whole-map code stored
    np.testing.assert_array_equal(book["reached"], np.packbits(mass > 0.0))
    reference = tmp_path / "reference.fits"
    hp.write_map(str(reference), delta, nest=True, dtype=np.float32, extra_header=plan.header_cards(sheet, book))
    assert open(sheet.path, "rb").read() == reference.read_bytes()


def test_non_finite_pixel_leaves_no_file(tmp_path, monkeypatch):
    plan, sheet = make_plan(tmp_path, 256)
    mass = np.ones(plan.npix)
    mass[2 * BLOCK + 17] = np.inf  # in the last block
    feed_mass(monkeypatch, mass)
    with pytest.raises(InputError, match=r"usmesh: sheet 7 has 1 non-finite pixels .*refusing to write it"):
        make_sheet(plan, None, sheet, chunk_size=1000)
    assert not (tmp_path / "mass_sheets").exists() or not list((tmp_path / "mass_sheets").iterdir())


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float32_overflow_found_mid_write_leaves_no_file(tmp_path, monkeypatch):
    """A finite mass whose overdensity overflows float32 is only seen while the sheet is streamed."""
    plan, sheet = make_plan(tmp_path, 256)
    mass = np.ones(plan.npix)
    mass[2 * BLOCK + 17] = 1e300  # finite in float64, inf as float32 delta, in the last block
    feed_mass(monkeypatch, mass)
    with pytest.raises(InputError, match=r"usmesh: sheet 7 has 1 non-finite pixels .*refusing to write it"):
        make_sheet(plan, None, sheet, chunk_size=1000)
    assert not (tmp_path / "mass_sheets").exists() or not list((tmp_path / "mass_sheets").iterdir())


@pytest.mark.parametrize("chunk_size", [97, 10**6])
def test_sorted_runs_and_whole_map_routes_give_the_same_mass_blocks(monkeypatch, caplog, chunk_size):
    """The real fullsky subset: slices 44, 50 and 59 are split across two light-cone events (two ID runs)."""
    from lensing_ssc.io.usmesh import UsmeshCatalog
    catalog = UsmeshCatalog(Path(__file__).parents[2] / "data" / "fastpm_fullsky_subset" / "usmesh")
    monkeypatch.setattr(preprocessing_steps, "_MASS_BLOCK", 1000)  # 13 blocks of the nside-32 map
    for index in (44, 45, 50):
        merged, whole = preprocessing_steps.RowTally(), preprocessing_steps.RowTally()
        blocks = list(preprocessing_steps.sheet_mass_blocks(catalog, index, chunk_size, merged))
        with monkeypatch.context() as patch:
            patch.setattr(preprocessing_steps, "MAX_SORTED_RUNS", 0)  # as for rows in no ID order
            caplog.clear()
            expected = list(preprocessing_steps.sheet_mass_blocks(catalog, index, chunk_size, whole))
            assert "not in ID order" in caplog.text
        assert [b.size for b in blocks] == [b.size for b in expected] == [1000] * 12 + [288]
        np.testing.assert_array_equal(np.concatenate(blocks), np.concatenate(expected))
        assert merged.rows == whole.rows > 0 and merged.row_mass == pytest.approx(whole.row_mass, rel=1e-12)
