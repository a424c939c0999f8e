"""The delta sheet computed and written block by block: the same mean, reached bits, bincounts and file
bytes as the whole-map computation, and no file when a pixel is not finite."""
import healpy as hp
import numpy as np
import pytest

from lensing_ssc.core.errors import InputError
from lensing_ssc.processing.steps import preprocessing_steps
from lensing_ssc.processing.steps.preprocessing_steps import (Float64Mean, PreprocessingPlan, SheetPlan, add_chunk,
                                                              make_sheet, overdensity_blocks, overdensity_float32,
                                                              reached_bits)

BLOCK = preprocessing_steps._OVERDENSITY_BLOCK


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


@pytest.mark.parametrize("nside", [1, 128, 256])
def test_blocks_and_bits_equal_the_whole_map_computation(nside):
    npix = 12 * nside**2
    mass = np.random.default_rng(nside).gamma(0.5, 3.0, npix) * (np.arange(npix) % 7 > 0)
    blocks = list(overdensity_blocks(mass, 3396.0, 3297.3, 8.57))
    assert max(block.size for block in blocks) == min(npix, BLOCK)
    np.testing.assert_array_equal(np.concatenate(blocks), overdensity_float32(mass, 3396.0, 3297.3, 8.57))
    np.testing.assert_array_equal(reached_bits(mass), np.packbits(mass > 0.0))


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


def test_streamed_sheet_has_the_bytes_of_the_whole_map_write(tmp_path, monkeypatch):
    nside = 128  # 3 blocks
    plan, sheet = make_plan(tmp_path, nside)
    mass = np.random.default_rng(2).gamma(0.3, 5000.0, plan.npix) * (np.arange(plan.npix) % 5 > 0)
    monkeypatch.setattr(preprocessing_steps, "accumulate_sheet_mass", lambda *args: (mass.copy(), 10, mass.sum()))
    book = make_sheet(plan, None, sheet, chunk_size=1000)
    delta = overdensity_float32(mass, sheet.chi_far, sheet.chi_near, plan.rhobar)
    assert book["mean_delta"] == np.mean(delta, dtype=np.float64)  # what the whole-map code stored
    np.testing.assert_array_equal(book["reached"], np.packbits(mass > 0.0))
    reference = tmp_path / "reference.fits"
    hp.write_map(str(reference), delta, nest=True, dtype=np.float32, extra_header=plan.header_cards(sheet, book))
    assert open(sheet.path, "rb").read() == reference.read_bytes()


def test_non_finite_pixel_leaves_no_file(tmp_path, monkeypatch):
    plan, sheet = make_plan(tmp_path, 128)
    mass = np.ones(plan.npix)
    mass[2 * BLOCK + 17] = np.inf  # in the last block
    monkeypatch.setattr(preprocessing_steps, "accumulate_sheet_mass", lambda *args: (mass, 10, 1.0))
    with pytest.raises(InputError, match=r"usmesh: sheet 7 has 1 non-finite pixels .*refusing to write it"):
        make_sheet(plan, None, sheet, chunk_size=1000)
    assert not (tmp_path / "mass_sheets").exists() or not list((tmp_path / "mass_sheets").iterdir())


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float32_overflow_found_mid_write_leaves_no_file(tmp_path, monkeypatch):
    """A finite mass whose overdensity overflows float32 is only seen while the sheet is streamed."""
    plan, sheet = make_plan(tmp_path, 128)
    mass = np.ones(plan.npix)
    mass[2 * BLOCK + 17] = 1e300  # finite in float64, inf as float32 delta, in the last block
    monkeypatch.setattr(preprocessing_steps, "accumulate_sheet_mass", lambda *args: (mass, 10, 1.0))
    with pytest.raises(InputError, match=r"usmesh: sheet 7 has 1 non-finite pixels .*refusing to write it"):
        make_sheet(plan, None, sheet, chunk_size=1000)
    assert not (tmp_path / "mass_sheets").exists() or not list((tmp_path / "mass_sheets").iterdir())
