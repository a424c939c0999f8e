"""GeometryCache: exactly the uncached indices and patches; damaged or foreign entries rebuilt, never
used; several processes filling one key leave one valid entry."""
import logging
import multiprocessing

import healpy as hp
import numpy as np
import pytest

from lensing_ssc.io.geometry_cache import GeometryCache
from lensing_ssc.science.patches import gnomonic_image_size, gnomonic_patch, patch_pixel_indices, project_patch

NSIDE = 64
XSIZE = 32
SIDE = 10.0
# A generic centre, one near the north pole and one at phi = 0 (RING index wrap-around).
CENTRES = [(1.1, 2.3), (0.05, 4.0), (np.pi / 2, 0.0)]


def entries(directory):
    return sorted(p.name for p in directory.iterdir())


def test_disabled_cache_computes():
    cache = GeometryCache(None)
    assert not cache.enabled
    found = cache.patch_pixel_indices(NSIDE, 1.1, 2.3, SIDE, XSIZE)
    np.testing.assert_array_equal(found, patch_pixel_indices(NSIDE, 1.1, 2.3, SIDE, XSIZE))
    assert (cache.hits, cache.misses, cache.rebuilt) == (0, 0, 0)


@pytest.mark.parametrize("compress", [False, True])
def test_cached_indices_and_patches_equal_uncached_exactly(tmp_path, compress):
    ring = np.random.default_rng(3).standard_normal(hp.nside2npix(NSIDE))
    cold = GeometryCache(tmp_path, compress=compress)
    first = [cold.patch_pixel_indices(NSIDE, theta, phi, SIDE, XSIZE) for theta, phi in CENTRES]
    assert (cold.hits, cold.misses) == (0, len(CENTRES))
    assert len([n for n in entries(tmp_path) if n.endswith(".npz")]) == len(CENTRES)
    warm = GeometryCache(tmp_path, compress=compress)  # a new process would see only the files
    for (theta, phi), computed in zip(CENTRES, first):
        cached = warm.patch_pixel_indices(NSIDE, np.float64(theta), phi, SIDE, np.int64(XSIZE))
        reference = patch_pixel_indices(NSIDE, theta, phi, SIDE, XSIZE)
        assert cached.dtype == np.int32 and cached.shape == (gnomonic_image_size(XSIZE),) * 2  # as stored
        np.testing.assert_array_equal(computed, reference)
        np.testing.assert_array_equal(cached, reference)
        np.testing.assert_array_equal(project_patch(ring, cached, XSIZE),
                                      gnomonic_patch(ring, theta, phi, SIDE, XSIZE))
    assert (warm.hits, warm.misses, warm.rebuilt) == (len(CENTRES), 0, 0)


def test_every_key_field_selects_its_own_entry(tmp_path):
    cache = GeometryCache(tmp_path)
    calls = [(NSIDE, 1.1, 2.3, SIDE, XSIZE), (2 * NSIDE, 1.1, 2.3, SIDE, XSIZE), (NSIDE, 1.1, 2.3, SIDE, 2 * XSIZE),
             (NSIDE, 1.1, 2.3, 5.0, XSIZE), (NSIDE, np.nextafter(1.1, 2.0), 2.3, SIDE, XSIZE),
             (NSIDE, 1.1, np.nextafter(2.3, 3.0), SIDE, XSIZE)]
    for args in calls:
        cache.patch_pixel_indices(*args)
    assert cache.misses == len(calls) and len(entries(tmp_path)) == len(calls)
    for args in calls:
        np.testing.assert_array_equal(cache.patch_pixel_indices(*args), patch_pixel_indices(*args))
    assert cache.hits == len(calls)


@pytest.mark.parametrize("nside, stored", [(8192, np.int32), (16384, np.int64)])
def test_smallest_sufficient_index_dtype_on_disk(tmp_path, nside, stored):
    """int32 while 12 nside^2 - 1 fits (nside 8192: 8.1e8 pixels), int64 beyond (16384: 3.2e9 > 2^31)."""
    cache = GeometryCache(tmp_path)
    computed = cache.patch_pixel_indices(nside, 1.1, 2.3, 1.0, 16)
    with np.load(next(tmp_path.glob("*.npz"))) as entry:
        assert entry["indices"].dtype == stored
    cached = GeometryCache(tmp_path).patch_pixel_indices(nside, 1.1, 2.3, 1.0, 16)
    np.testing.assert_array_equal(cached, patch_pixel_indices(nside, 1.1, 2.3, 1.0, 16))
    np.testing.assert_array_equal(computed, cached)
    assert cached.dtype == computed.dtype == stored  # returned as stored, on a hit and on a miss


def _truncate(path, key_path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path, key_path):
    path.write_bytes(b"not an npz at all")


def _flip_a_data_byte(path, key_path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the (uncompressed) indices: caught by the zip CRC
    path.write_bytes(bytes(data))


def _wrong_checksum(path, key_path):
    with np.load(path) as entry:
        fields = {name: entry[name] for name in entry.files}
    fields["indices"] = fields["indices"].copy()
    fields["indices"][0, 0] += 1  # a consistent npz (valid zip CRC) whose indices no longer match crc32
    with open(path, "wb") as handle:
        np.savez(handle, **fields)


def _foreign_entry(path, key_path):
    path.write_bytes(key_path.read_bytes())  # a valid entry of another centre under this key's name


def _missing_field(path, key_path):
    with np.load(path) as entry:
        fields = {name: entry[name] for name in entry.files if name != "crc32"}
    with open(path, "wb") as handle:
        np.savez(handle, **fields)


@pytest.mark.parametrize("damage", [_truncate, _garbage, _flip_a_data_byte, _wrong_checksum, _foreign_entry,
                                    _missing_field])
def test_damaged_or_foreign_entry_is_detected_and_rebuilt(tmp_path, caplog, damage):
    cache = GeometryCache(tmp_path)
    cache.patch_pixel_indices(NSIDE, 1.1, 2.3, SIDE, XSIZE)
    path = next(tmp_path.glob("*.npz"))
    cache.patch_pixel_indices(NSIDE, 0.5, 1.0, SIDE, XSIZE)
    other = next(p for p in tmp_path.glob("*.npz") if p != path)
    damage(path, other)

    reader = GeometryCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.geometry_cache"):
        found = reader.patch_pixel_indices(NSIDE, 1.1, 2.3, SIDE, XSIZE)
    np.testing.assert_array_equal(found, patch_pixel_indices(NSIDE, 1.1, 2.3, SIDE, XSIZE))
    assert (reader.hits, reader.misses, reader.rebuilt) == (0, 0, 1)
    assert path.name in caplog.text and "recomputing" in caplog.text
    again = GeometryCache(tmp_path)  # the entry was replaced by a valid one
    np.testing.assert_array_equal(again.patch_pixel_indices(NSIDE, 1.1, 2.3, SIDE, XSIZE), found)
    assert again.hits == 1
    assert all(name.endswith(".npz") for name in entries(tmp_path))


def test_flipped_byte_in_compressed_entry_is_rebuilt(tmp_path):
    cache = GeometryCache(tmp_path, compress=True)
    cache.patch_pixel_indices(NSIDE, 1.1, 2.3, SIDE, XSIZE)
    path = next(tmp_path.glob("*.npz"))
    _flip_a_data_byte(path, None)
    reader = GeometryCache(tmp_path, compress=True)
    np.testing.assert_array_equal(reader.patch_pixel_indices(NSIDE, 1.1, 2.3, SIDE, XSIZE),
                                  patch_pixel_indices(NSIDE, 1.1, 2.3, SIDE, XSIZE))
    assert reader.rebuilt == 1


@pytest.mark.parametrize("args", [(0, 1.1, 2.3, SIDE, XSIZE), (NSIDE, 4.0, 2.3, SIDE, XSIZE),
                                  (NSIDE, 1.1, 2.3, 0.0, XSIZE), (NSIDE, 1.1, 2.3, SIDE, 10),
                                  (64.0, 1.1, 2.3, SIDE, XSIZE), (True, 1.1, 2.3, SIDE, XSIZE)])
def test_bad_arguments_raise_like_uncached_and_store_nothing(tmp_path, args):
    with pytest.raises(ValueError) as uncached:
        patch_pixel_indices(*args)
    with pytest.raises(ValueError) as cached:
        GeometryCache(tmp_path).patch_pixel_indices(*args)
    assert str(cached.value) == str(uncached.value)
    assert not tmp_path.exists() or entries(tmp_path) == []


def test_unwritable_cache_still_returns_indices(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    cache = GeometryCache(blocker / "cache")
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.geometry_cache"):
        for theta in (1.1, 1.2):
            found = cache.patch_pixel_indices(NSIDE, theta, 2.3, SIDE, XSIZE)
            np.testing.assert_array_equal(found, patch_pixel_indices(NSIDE, theta, 2.3, SIDE, XSIZE))
    assert caplog.text.count("cannot write") == 1  # warned once, not per patch


def _fill_concurrently(directory, barrier, centres):
    """Child process: wait for the other one, then fill the same keys; return the indices."""
    cache = GeometryCache(directory)
    barrier.wait()
    return [cache.patch_pixel_indices(NSIDE, theta, phi, SIDE, 64) for theta, phi in centres]


def test_two_processes_filling_the_same_keys_leave_valid_entries(tmp_path):
    context = multiprocessing.get_context("spawn")
    centres = [(1.1, 2.3), (0.7, 5.0), (2.0, 1.0), (1.5, 3.0)]
    with context.Manager() as manager:
        barrier = manager.Barrier(2)
        with context.Pool(2) as pool:
            results = pool.starmap(_fill_concurrently, [(tmp_path, barrier, centres)] * 2)
    for per_process in results:
        for (theta, phi), found in zip(centres, per_process):
            np.testing.assert_array_equal(found, patch_pixel_indices(NSIDE, theta, phi, SIDE, 64))
    names = entries(tmp_path)
    assert len(names) == len(centres) and all(n.endswith(".npz") for n in names)  # no temporaries left
    reader = GeometryCache(tmp_path)
    for theta, phi in centres:
        reader.patch_pixel_indices(NSIDE, theta, phi, SIDE, 64)
    assert (reader.hits, reader.rebuilt) == (len(centres), 0)
