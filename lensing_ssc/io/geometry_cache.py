"""On-disk cache of patch projection geometry, shared by ranks, jobs, maps, redshifts and noise levels.

The gnomonic image of a patch samples the full-sky map at the RING pixels returned by
:func:`lensing_ssc.science.patches.patch_pixel_indices`; they depend only on (nside, patch side,
xsize, centre) and take ~0.12 s per patch at xsize 1024, about 3x the time of sampling and rotating
the patch (0.04 s). A warm cache turns that into a ~9 ms file read.

Layout: one ``.npz`` per key in ``cache_dir``, named ``patch_n{nside}_x{xsize}_{digest}.npz`` where
``digest`` is the sha256 (first 32 hex digits) of the key. Each file holds

    indices   (M, M) RING pixel indices, int32 when 12 nside^2 <= 2^31 else int64 (returned as stored)
    key       the key as canonical JSON (compared on read: a foreign entry is never used)
    crc32     CRC-32 of the ``indices.npy`` member as written (compared on read with the CRC-32 the zip
              directory records for it, which the zip reader checks against the member's bytes as it
              reads them: a damaged entry, or one rewritten with other indices, is never used, and no
              hash is computed on a hit; a sha256 of the indices cost 5 ms of a 50 ms warm patch)

The key holds nside, xsize, the patch side [deg], the centre (theta, phi) [rad] as exact floats (a
rounded key could serve the indices of a centre 1e-12 rad away, which can differ on a HEALPix pixel
boundary: the cache must give exactly the uncached answer), the lensing_ssc and healpy versions and
the cache format. Entries are written to a unique temporary file in ``cache_dir`` (name, pid,
random suffix, ``.inprogress``), fsynced and renamed onto the final name (:func:`io.atomic.commit`),
so readers only ever open complete files and several processes filling one key at once leave one
valid entry (the last rename wins; all writers write the same content). A missing, unreadable,
damaged or foreign entry is logged, recomputed and replaced; a failed write is logged and the
computed indices are returned anyway (the cache never stops the pipeline).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import numbers
import os
import uuid
import zipfile
import zlib
from contextlib import suppress
from pathlib import Path
from typing import Optional

import healpy as hp
import numpy as np

from lensing_ssc import __version__
from lensing_ssc.io.atomic import INPROGRESS_SUFFIX, commit
from lensing_ssc.science.patches import gnomonic_image_size, patch_pixel_indices

log = logging.getLogger("lensing_ssc.geometry_cache")

CACHE_FORMAT = 2
_ENTRY_FIELDS = {"indices", "key", "crc32"}
_INDICES_MEMBER = "indices.npy"
# What reading a damaged npz can raise (zip structure, CRC, deflate stream, array header).
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def _npy_crc32(array: np.ndarray) -> int:
    """CRC-32 of the ``.npy`` bytes numpy writes for ``array`` (the member ``np.savez`` stores)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return zlib.crc32(buffer.getbuffer())


def _index_dtype(nside: int) -> np.dtype:
    """Smallest of int32/int64 that holds every RING index 0 .. 12 nside^2 - 1."""
    return np.dtype(np.int32) if 12 * nside * nside - 1 <= np.iinfo(np.int32).max else np.dtype(np.int64)


class GeometryCache:
    """Patch pixel indices computed once per (nside, side, xsize, centre) and kept in ``cache_dir``.

    ``cache_dir``: directory of the entries (created on the first store); ``None`` disables the cache
    (every call computes). ``compress``: write entries with ``np.savez_compressed`` (smaller, slower
    to write and read; see docs/performance.md). Counters ``hits``, ``misses`` (computed: no entry)
    and ``rebuilt`` (computed: a bad entry was replaced) are kept per instance for logging.
    """

    def __init__(self, cache_dir=None, compress: bool = False):
        self.directory: Optional[Path] = None if cache_dir is None else Path(cache_dir)
        self.compress = bool(compress)
        self.hits = 0
        self.misses = 0
        self.rebuilt = 0
        self._write_failed = False

    def __repr__(self):
        return f"GeometryCache({None if self.directory is None else str(self.directory)!r}, compress={self.compress})"

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def patch_pixel_indices(self, nside: int, theta: float, phi: float, patch_size_deg: float,
                            xsize: int) -> np.ndarray:
        """RING pixel indices (M, M) of the gnomonic image of a patch, ``M = gnomonic_image_size(xsize)``,
        int32 while 12 nside^2 fits (nside <= 8192), else int64 (the stored type: no conversion on a hit).

        Same arguments and values as :func:`lensing_ssc.science.patches.patch_pixel_indices`
        (centre ``theta, phi`` [rad], side ``patch_size_deg`` [deg], ``xsize`` patch pixels): read from
        the cache when a valid entry exists, else computed, stored and returned. Bad arguments raise
        the ValueError of the uncached function.
        """
        key = self._key(nside, theta, phi, patch_size_deg, xsize)
        if key is None:  # disabled, or arguments of a type the uncached function will reject
            return patch_pixel_indices(nside, theta, phi, patch_size_deg, xsize)
        path = self._entry_path(key)
        indices, problem = self._load(path, key, gnomonic_image_size(key["xsize"]))
        if indices is not None:
            self.hits += 1
            return indices
        indices = patch_pixel_indices(nside, theta, phi, patch_size_deg, xsize).astype(_index_dtype(nside))
        if problem is None:
            self.misses += 1
        else:
            self.rebuilt += 1
            log.warning("geometry cache: %s: %s; recomputing and replacing it", path, problem)
        self._store(path, key, indices)
        return indices

    # -- keys and files -------------------------------------------------------------------------
    def _key(self, nside, theta, phi, patch_size_deg, xsize) -> Optional[dict]:
        if self.directory is None:
            return None
        integers, reals = (nside, xsize), (theta, phi, patch_size_deg)
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in integers) or \
                any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in reals):
            return None
        return {"kind": "patch_pixel_indices", "format": CACHE_FORMAT, "lensing_ssc": __version__,
                "healpy": hp.__version__, "nside": int(nside), "xsize": int(xsize),
                "patch_size_deg": float(patch_size_deg), "theta": float(theta), "phi": float(phi)}

    def _entry_path(self, key: dict) -> Path:
        """File of a key: ``{cache_dir}/patch_n{nside}_x{xsize}_{sha256(key)[:32]}.npz``."""
        digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:32]
        return self.directory / f"patch_n{key['nside']}_x{key['xsize']}_{digest}.npz"

    @staticmethod
    def _load(path: Path, key: dict, image_size: int):
        """(indices, None) for a valid entry; (None, None) if there is none; (None, why) if bad."""
        try:
            with np.load(path, allow_pickle=False) as entry:
                if set(entry.files) != _ENTRY_FIELDS:
                    return None, f"fields {sorted(entry.files)}, expected {sorted(_ENTRY_FIELDS)}"
                found_key, expected_crc = str(entry["key"][()]), int(entry["crc32"][()])
                recorded_crc = entry.zip.getinfo(_INDICES_MEMBER).CRC
                stored = entry["indices"]  # the zip reader checks the bytes against recorded_crc
        except FileNotFoundError:
            return None, None
        except _READ_ERRORS as exc:
            return None, f"unreadable entry ({type(exc).__name__}: {exc})"
        if found_key != _canonical(key):
            return None, f"entry made for another key ({found_key}; expected {_canonical(key)})"
        if stored.shape != (image_size, image_size) or stored.dtype not in (np.int32, np.int64):
            return None, f"indices {stored.dtype}{stored.shape}, expected int32/int64 ({image_size}, {image_size})"
        if stored.dtype != _index_dtype(key["nside"]):
            return None, f"indices {stored.dtype}, expected {_index_dtype(key['nside'])} for nside {key['nside']}"
        if recorded_crc != expected_crc:
            return None, f"indices member has CRC-32 {recorded_crc:08x}, the entry recorded {expected_crc:08x}"
        return stored, None

    def _store(self, path: Path, key: dict, stored: np.ndarray) -> None:
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{INPROGRESS_SUFFIX}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "xb") as handle:
                (np.savez_compressed if self.compress else np.savez)(
                    handle, indices=stored, key=np.array(_canonical(key)), crc32=np.array(_npy_crc32(stored)))
            commit(temporary, path)
        except BaseException as exc:
            with suppress(OSError):
                temporary.unlink()
            if not isinstance(exc, OSError):
                raise
            # Computed indices are still returned: a read-only or full cache only costs time.
            (log.debug if self._write_failed else log.warning)(
                "geometry cache: cannot write %s (%s); continuing without caching", path, exc)
            self._write_failed = True


def _canonical(key: dict) -> str:
    """The key as JSON with sorted keys; floats in repr form, which round-trips exactly."""
    return json.dumps(key, sort_keys=True)


__all__ = ["GeometryCache", "CACHE_FORMAT"]
