"""Maps filled range by range (allocate_nested_map + MapRangeWriter) against write_nested_map's bytes,
and the header reader (astropy Header.fromfile) naming the file for every kind of bad map file."""
import re

import healpy as hp
import numpy as np
import pytest
from astropy.io import fits

from lensing_ssc.core.errors import InputError
from lensing_ssc.io.healpix_maps import (MapRangeWriter, allocate_nested_map, read_header, read_header_and_layout,
                                         read_nested_map, write_nested_map)

CARDS = [("SHEET", 3, "sheet index"), ("DMEAN", 0.1234567890123456789, "mean"), ("COVERED", True, "full sky"),
         ("INPUTID", "0123456789abcdef", "a string")]


def map_values(npix, dtype):
    """Values to store as ``dtype``: float64 over 60 decades for float types (they round when stored
    float32), floats within the int32 range (truncated when stored) for int32."""
    rng = np.random.default_rng(npix)
    if np.dtype(dtype).kind == "i":
        return rng.uniform(-2e9, 2e9, npix)
    return rng.normal(size=npix) * 10.0 ** rng.uniform(-30, 30, npix)


def shuffled_ranges(npix, seed):
    """[start, stop) ranges covering [0, npix), cut off the 1024-pixel rows, an empty one included, in a
    random order."""
    rng = np.random.default_rng(seed)
    cuts = np.unique(np.concatenate([[0, npix], rng.integers(0, npix + 1, 6), [min(1, npix)] * 2]))
    ranges = list(zip(cuts[:-1], cuts[1:])) + [(npix // 2, npix // 2)]
    return [ranges[i] for i in rng.permutation(len(ranges))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("nside", [1, 2, 16, 64])
def test_ranges_written_in_any_order_give_the_bytes_of_write_nested_map(tmp_path, nside, dtype):
    npix = 12 * nside**2
    values = map_values(npix, dtype)
    expected = write_nested_map(tmp_path / "streamed.fits", values, CARDS, dtype=dtype).read_bytes()
    stored_type = np.dtype(dtype).newbyteorder(">")
    layout = allocate_nested_map(tmp_path / "filled.fits", nside, CARDS, dtype=dtype)
    assert (layout.npix, layout.dtype) == (npix, stored_type.str)
    assert (tmp_path / "filled.fits").stat().st_size == len(expected)  # its final size from the start
    ranges = shuffled_ranges(npix, nside)
    with MapRangeWriter(layout) as writer:
        for start, stop in ranges:
            written = writer.write(int(start), values[start:stop])
            assert written.dtype == stored_type and written.flags.c_contiguous
            np.testing.assert_array_equal(written, values[start:stop].astype(stored_type))
        writer.sync()
    assert (tmp_path / "filled.fits").read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filled.fits", "streamed.fits"]


def test_an_allocated_map_is_all_zeros_with_its_layout_and_header(tmp_path):
    nside = 16
    path = tmp_path / "new.fits"
    layout = allocate_nested_map(path, nside, CARDS, dtype=np.float32)
    header, read_layout = read_header_and_layout(path)
    assert read_layout == layout
    assert (header["NSIDE"], header["ORDERING"], header["SHEET"], header["INPUTID"]) == (
        nside, "NESTED", 3, "0123456789abcdef")
    values, _ = read_nested_map(path)
    np.testing.assert_array_equal(values, np.zeros(12 * nside**2))
    # a few ranges written: the rest stays 0
    with MapRangeWriter(layout) as writer:
        writer.write(100, np.full(50, 2.5))
    values, _ = read_nested_map(path)
    np.testing.assert_array_equal(values[100:150], 2.5)
    assert np.count_nonzero(values) == 50


@pytest.mark.parametrize("old", ["larger map", "garbage"])
def test_an_existing_file_is_replaced_not_appended_to(tmp_path, old):
    nside = 2
    path = tmp_path / "m.fits"
    if old == "larger map":
        write_nested_map(path, np.ones(12 * 64**2), [("OLD", 1, "")])
    else:
        path.write_bytes(b"\xff" * 100_000)
    values = np.arange(12 * nside**2, dtype=np.float64)
    layout = allocate_nested_map(path, nside, CARDS)
    expected = write_nested_map(tmp_path / "reference.fits", values, CARDS).read_bytes()
    assert path.stat().st_size == len(expected)
    np.testing.assert_array_equal(read_nested_map(path)[0], np.zeros(values.size))  # none of the old bytes
    with MapRangeWriter(layout) as writer:
        writer.write(0, values)
    assert path.read_bytes() == expected and "OLD" not in read_header(path)


def test_a_write_outside_the_map_is_refused_naming_the_file(tmp_path):
    nside = 2
    path = tmp_path / "m.fits"
    layout = allocate_nested_map(path, nside)
    before = path.read_bytes()
    with MapRangeWriter(layout) as writer:
        for start, values in [(-1, np.ones(2)), (40, np.ones(9)), (48, np.ones(1)), (0, np.ones(49)),
                              (0, np.ones((2, 3)))]:
            with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: cannot write .* at pixel {start} "
                                                 r"of a map of 48 pixels"):
                writer.write(start, values)
        assert path.read_bytes() == before  # nothing written by a refused write
        writer.write(40, np.ones(8))  # up to the last pixel is fine
        writer.write(48, np.ones(0))  # an empty range at the end too
    np.testing.assert_array_equal(read_nested_map(path)[0], np.r_[np.zeros(40), np.ones(8)])


def test_allocation_refuses_what_a_healpix_map_cannot_be(tmp_path):
    with pytest.raises(ValueError, match=r"m\.fits: nside 3 is not a power of 2"):
        allocate_nested_map(tmp_path / "m.fits", 3)
    with pytest.raises(ValueError, match=r"m\.fits: cannot write a map of dtype bool"):
        allocate_nested_map(tmp_path / "m.fits", 2, dtype=bool)
    assert list(tmp_path.iterdir()) == []


# -- header errors name the file ----------------------------------------------------------------

def _good_map_bytes(tmp_path):
    return write_nested_map(tmp_path / "good.fits", np.arange(48.0)).read_bytes()


def _not_fits(tmp_path, path):
    path.write_text("this is a text file, not a FITS map\n" * 100)


def _empty(tmp_path, path):
    path.write_bytes(b"")


def _truncated_in_primary_header(tmp_path, path):
    path.write_bytes(_good_map_bytes(tmp_path)[:1000])


def _truncated_after_primary_header(tmp_path, path):
    path.write_bytes(_good_map_bytes(tmp_path)[:2880])


def _truncated_in_table_header(tmp_path, path):
    path.write_bytes(_good_map_bytes(tmp_path)[:2880 + 800])


def _primary_hdu_only(tmp_path, path):
    fits.PrimaryHDU().writeto(path)


def _image_extension(tmp_path, path):
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros(48))]).writeto(path)


@pytest.mark.parametrize("make, fragment", [
    (_not_fits, "cannot read FITS map"),
    (_empty, "cannot read FITS map"),
    (_truncated_in_primary_header, "cannot read FITS map"),
    (_truncated_after_primary_header, "cannot read FITS map"),
    (_truncated_in_table_header, "cannot read FITS map"),
    (_primary_hdu_only, "cannot read FITS map"),
    (_image_extension, "no binary table in HDU 1"),
])
@pytest.mark.parametrize("reader", [read_header, read_header_and_layout])
def test_unreadable_map_files_are_an_input_error_naming_the_file(tmp_path, make, fragment, reader):
    path = tmp_path / "bad.fits"
    make(tmp_path, path)
    with pytest.raises(InputError) as caught:
        reader(path)
    assert str(caught.value).startswith(f"{path}: ") and fragment in str(caught.value)


@pytest.mark.parametrize("reader", [read_header, read_header_and_layout])
def test_a_ring_ordered_map_is_refused_naming_the_file_and_orderings(tmp_path, reader):
    path = tmp_path / "ring.fits"
    hp.write_map(str(path), np.zeros(48), nest=False, dtype=np.float32)
    with pytest.raises(InputError) as caught:
        reader(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "ORDERING is RING" in message and "NESTED" in message
