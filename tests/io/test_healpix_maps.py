"""Reading NESTED maps by pixel range straight from the file (MapRangeReader) against astropy/healpy."""
import healpy as hp
import numpy as np
import pytest

from lensing_ssc.core.errors import InputError
from lensing_ssc.io.healpix_maps import (MapRangeReader, read_header_and_layout, read_nested_map,
                                         read_nested_range, write_nested_map)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ranges_read_by_pread_equal_astropy_reads(tmp_path, dtype):
    nside = 16
    values = np.random.default_rng(1).normal(size=12 * nside**2)
    path = write_nested_map(tmp_path / "m.fits", values, [("SHEET", 3, "")], dtype=dtype)
    header, layout = read_header_and_layout(path)
    assert (header["SHEET"], layout.npix, layout.dtype) == (3, 12 * nside**2, np.dtype(dtype).newbyteorder(">").str)
    whole, _ = read_nested_map(path)
    with MapRangeReader(layout) as reader:
        # ranges across the table's 1024-pixel rows, an empty one, and the whole map
        for start, stop in [(0, 1), (1000, 1030), (2047, 3072), (5, 5), (0, layout.npix)]:
            out = np.empty(stop - start)
            reader.read_into(start, stop, out)
            np.testing.assert_array_equal(out, whole[start:stop])
            np.testing.assert_array_equal(out, read_nested_range(path, start, stop))
        with pytest.raises(ValueError, match="outside the map"):
            reader.read_into(10, layout.npix + 1, np.empty(layout.npix - 9))


def test_truncated_map_is_named_when_its_range_is_read(tmp_path):
    path = write_nested_map(tmp_path / "m.fits", np.zeros(12 * 16**2))
    _, layout = read_header_and_layout(path)
    with open(path, "r+b") as handle:  # keep the header, cut the last quarter of the pixels
        handle.truncate(layout.data_offset + 3 * layout.npix)
    with MapRangeReader(layout) as reader:
        reader.read_into(0, 100, np.empty(100))
        with pytest.raises(InputError, match=r"m\.fits: file ends inside the map data \(pixel 2304\)"):
            reader.read_into(2000, layout.npix, np.empty(layout.npix - 2000))


def test_tables_that_are_not_one_column_of_all_pixels_are_refused(tmp_path):
    nside = 8
    two_columns = tmp_path / "two.fits"
    hp.write_map(str(two_columns), [np.zeros(12 * nside**2)] * 2, nest=True)
    with pytest.raises(InputError, match=r"two\.fits: the map table has TFIELDS = 2"):
        read_header_and_layout(two_columns)


def test_nside_that_disagrees_with_the_pixel_count_is_refused(tmp_path):
    from astropy.io import fits
    path = write_nested_map(tmp_path / "m.fits", np.zeros(12 * 8**2))
    with fits.open(path, mode="update") as hdus:
        hdus[1].header["NSIDE"] = 16
    with pytest.raises(InputError, match=r"m\.fits: 768 pixels, expected 12\*NSIDE\^2 = 3072 for NSIDE=16"):
        read_header_and_layout(path)
