"""Writing NESTED maps block by block in healpy's bytes, and reading them by pixel range straight from the
file (MapRangeReader), against astropy/healpy."""
import os

import healpy as hp
import numpy as np
import pytest

from lensing_ssc.core.errors import InputError
from lensing_ssc.io.healpix_maps import (MapRangeReader, read_header_and_layout, read_nested_map,
                                         read_nested_range, write_nested_map, write_nested_map_blocks)

CARDS = [("SHEET", 3, "sheet index"), ("DMEAN", 0.1234567890123456789, "mean"), ("COVERED", True, "full sky"),
         ("INPUTID", "0123456789abcdef", "a string"), ("NEGATIVE", -2.5e-300, "tiny float")]


def split(values, bounds):
    """``values`` cut at ``bounds`` (clipped to its size): consecutive blocks, empty ones included."""
    cuts = [min(b, values.size) for b in bounds]
    return [values[a:b] for a, b in zip([0] + cuts, cuts + [values.size])]


def splits(values):
    """Block splits of a map: whole, empty blocks, cuts off the 1024-pixel rows, random sizes."""
    sizes = np.random.default_rng(values.size).integers(0, 3000, 40)
    return {"whole": [values], "empty": split(values, [0, 0, 5, 5, values.size, values.size]),
            "unaligned": split(values, [1, 1000, 1025, 3071, 5000]),
            "random": split(values, list(np.cumsum(sizes)))}


def map_values(npix, dtype):
    rng = np.random.default_rng(npix)
    if dtype == np.uint8:  # the footprint map: 0/1 bytes
        return (rng.random(npix) < 0.7).astype(np.uint8)
    return rng.normal(size=npix) * 10.0 ** rng.uniform(-30, 30, npix)  # float64: rounds when stored float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("nside", [1, 2, 4, 8, 16, 32, 64])
def test_blocks_are_written_in_the_bytes_of_healpy(tmp_path, nside, dtype):
    values = map_values(12 * nside**2, dtype)
    reference = tmp_path / "healpy.fits"
    hp.write_map(str(reference), values, nest=True, dtype=dtype, extra_header=CARDS)
    expected = reference.read_bytes()
    assert write_nested_map(tmp_path / "map.fits", values, CARDS, dtype=dtype).read_bytes() == expected
    for name, blocks in splits(values).items():
        path = write_nested_map_blocks(tmp_path / f"{name}.fits", iter(blocks), nside, CARDS, dtype=dtype)
        assert path.read_bytes() == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["healpy.fits", "map.fits"] + [f"{name}.fits" for name in splits(values)])  # no *.inprogress left


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_block_written_map_reads_back(tmp_path, dtype):
    nside = 32
    values = map_values(12 * nside**2, dtype)
    path = write_nested_map_blocks(tmp_path / "m.fits", splits(values)["unaligned"], nside, CARDS, dtype=dtype)
    stored = values.astype(dtype)
    np.testing.assert_array_equal(hp.read_map(str(path), nest=True, dtype=dtype), stored)
    whole, header = read_nested_map(path, dtype=dtype)
    np.testing.assert_array_equal(whole, stored)
    assert (header["NSIDE"], header["ORDERING"], header["SHEET"], header["INPUTID"]) == (
        nside, "NESTED", 3, "0123456789abcdef")
    _, layout = read_header_and_layout(path)
    assert (layout.npix, layout.dtype) == (values.size, np.dtype(dtype).newbyteorder(">").str)
    with MapRangeReader(layout) as reader:
        for start, stop in [(0, 1), (1000, 1030), (2047, 5000), (0, values.size)]:
            out = np.empty(stop - start)
            reader.read_into(start, stop, out)
            np.testing.assert_array_equal(out, stored[start:stop])


def test_blocks_that_do_not_add_up_leave_no_file(tmp_path):
    nside = 16
    values = np.arange(12 * nside**2, dtype=np.float32)
    path = tmp_path / "m.fits"
    with pytest.raises(ValueError, match=r"m\.fits: the pixel blocks hold 3071 pixels; expected 12\*nside\^2 = 3072"):
        write_nested_map_blocks(path, [values[:1000], values[1000:-1]], nside)
    with pytest.raises(ValueError, match=r"m\.fits: the pixel blocks hold more than the 12\*nside\^2 = 3072"):
        write_nested_map_blocks(path, [values, values[:1]], nside)
    with pytest.raises(ValueError, match=r"m\.fits: 3071 values are not a full-sky HEALPix map"):
        write_nested_map(path, values[:-1])
    assert list(tmp_path.iterdir()) == []


def test_an_error_in_the_middle_of_the_blocks_keeps_the_previous_file(tmp_path):
    nside = 16
    path = write_nested_map(tmp_path / "m.fits", np.zeros(12 * nside**2), [("RUN", 1, "")])
    before = path.read_bytes()

    def failing_blocks():
        yield np.ones(2000)
        raise FloatingPointError("non-finite pixels")

    with pytest.raises(FloatingPointError, match="non-finite"):
        write_nested_map_blocks(path, failing_blocks(), nside, [("RUN", 2, "")])
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_maps_of_types_without_big_endian_bytes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"m\.fits: cannot write a map of dtype bool"):
        write_nested_map(tmp_path / "m.fits", np.ones(12, dtype=bool), dtype=bool)
    with pytest.raises(ValueError, match=r"m\.fits: pixel block of shape \(3, 4\)"):
        write_nested_map_blocks(tmp_path / "m.fits", [np.zeros((3, 4))], 1)
    assert list(tmp_path.iterdir()) == []


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
            stored = np.empty(stop - start, dtype=layout.dtype)  # the file's own bytes, read without a copy
            reader.read_into(start, stop, stored)
            assert stored.tobytes() == whole[start:stop].astype(layout.dtype).tobytes()
        rows = np.empty((2, 40), dtype=layout.dtype)  # rows of a matrix of the stored type, as the Born sum reads
        reader.read_into(100, 140, rows[1])
        np.testing.assert_array_equal(rows[1], whole[100:140])
        with pytest.raises(ValueError, match="outside the map"):
            reader.read_into(10, layout.npix + 1, np.empty(layout.npix - 9))
        for out in (np.empty(29), np.empty(31, dtype=layout.dtype), np.empty((2, 15), dtype=layout.dtype)):
            with pytest.raises(ValueError, match=r"output of shape .* for the 30 pixels \[0, 30\)"):
                reader.read_into(0, 30, out)
    for start, stop in [(10, 5), (0, layout.npix + 1)]:
        with pytest.raises(ValueError, match="outside the map"):
            read_nested_range(path, start, stop)


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


def test_late_cards_give_the_bytes_of_the_final_header(tmp_path):
    from lensing_ssc.io.healpix_maps import write_nested_map_blocks
    values = np.random.default_rng(4).normal(size=12 * 8**2)
    mean = float(values.mean())
    cards = [("SHEET", 3, "index"), ("DMEAN", 0.0, "mean of the stored overdensity")]
    late = write_nested_map_blocks(tmp_path / "late.fits", [values[:100], values[100:]], 8, cards,
                                   late_cards=lambda: [("DMEAN", mean, "mean of the stored overdensity")])
    reference = tmp_path / "reference.fits"
    hp.write_map(str(reference), values, nest=True, dtype=np.float32,
                 extra_header=[("SHEET", 3, "index"), ("DMEAN", mean, "mean of the stored overdensity")])
    assert late.read_bytes() == reference.read_bytes()
    with pytest.raises(ValueError, match=r"cannot replace header card NOPE: found 0 card"):
        write_nested_map_blocks(tmp_path / "bad.fits", [values], 8, cards, late_cards=lambda: [("NOPE", 1.0, "")])
    assert not (tmp_path / "bad.fits").exists()


def test_a_streamed_map_asks_for_writeback_every_32_mib(tmp_path, monkeypatch):
    """sync_file_range(SYNC_FILE_RANGE_WRITE) on the temporary file after every 32 MiB of pixels, so the
    closing fsync finds most pages written; the bytes are those of healpy as always."""
    from lensing_ssc.io import atomic, healpix_maps
    calls = []

    def recorder(fd, offset, nbytes, flags):
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), offset, nbytes, flags, os.fstat(fd).st_size))
        return 0

    monkeypatch.setattr(atomic, "_sync_file_range", lambda: recorder)
    monkeypatch.setattr(healpix_maps, "_WRITEBACK_BYTES", 1 << 16)  # every 16384 float32 pixels
    path = tmp_path / "map.fits"
    values = np.arange(12 * 64**2, dtype=np.float32)  # 196608 B of pixels: 3 writebacks
    write_nested_map_blocks(path, (values[i:i + 5000] for i in range(0, values.size, 5000)), 64)
    assert [call[0] for call in calls] == [str(path) + ".inprogress"] * 3
    assert all(call[1:4] == (0, 0, atomic._SYNC_FILE_RANGE_WRITE) for call in calls)
    assert [call[4] >= (k + 1) << 16 for k, call in enumerate(calls)] == [True] * 3  # after the bytes
    np.testing.assert_array_equal(read_nested_map(path)[0], values)
    atomic.start_writeback(tmp_path / "missing")  # a failure to start writeback is not an error
