"""HEALPix maps on disk: NESTED FITS files read whole or by pixel range, written atomically.

Every map lensing_ssc writes carries ``ORDERING='NESTED'`` (SCIENCE.md Decision 2); reading a file
whose header ordering is missing or not NESTED is refused, because a silently re-ordered map looks
like white noise to every statistic.

Maps are written block by block (:func:`write_nested_map_blocks`) in the bytes of healpy's
``write_map(nest=True)``, so that a writer never holds the whole map, nor a converted copy of it.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

import healpy as hp
import numpy as np
from astropy.io import fits

from lensing_ssc.core.errors import InputError, is_disk_full
from lensing_ssc.io.atomic import atomic_output, start_writeback, start_writeback_fd


def _check_map_header(path: Path, header) -> None:
    """InputError unless ``header`` (astropy Header or dict) is that of a NESTED HEALPix map."""
    ordering = str(header.get("ORDERING", "")).strip().upper()
    if ordering != "NESTED":
        raise InputError(f"{path}: header ORDERING is {ordering or 'missing'}; expected 'NESTED' "
                         "(lensing_ssc keeps maps NESTED end to end)")
    if "NSIDE" not in header:
        raise InputError(f"{path}: header has no NSIDE; expected a HEALPix map")


def _read_table_header(path: Path) -> Tuple[fits.Header, int]:
    """The map extension's header, checked to be that of a NESTED HEALPix map, and the byte offset of its
    data. Only the two headers are read (astropy ``Header.fromfile``: a third of the time of
    ``fits.open``, which also builds the HDU objects; it counts when the kappa stage opens 100 sheets)."""
    try:
        with open(path, "rb") as handle:
            primary = fits.Header.fromfile(handle)
            handle.seek(_data_bytes(primary), os.SEEK_CUR)  # healpy writes none, other writers may
            header = fits.Header.fromfile(handle)
            data_offset = handle.tell()
    except EOFError:  # astropy's "no header here": the file ends before the map table
        raise InputError(f"{path}: cannot read FITS map (the file ends before the map table: truncated, or "
                         "not a HEALPix map)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read FITS map ({exc})") from None
    if str(header.get("XTENSION", "")).strip() != "BINTABLE":
        raise InputError(f"{path}: cannot read FITS map (no binary table in HDU 1: truncated, or not a "
                         "HEALPix map)")
    _check_map_header(path, header)
    return header, data_offset


def _data_bytes(header: fits.Header) -> int:
    """Bytes of the (image) data following ``header``, padded to whole FITS records."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    size = abs(int(header.get("BITPIX", 8))) // 8
    for axis in range(1, naxis + 1):
        size *= int(header.get(f"NAXIS{axis}", 0))
    return -(-size // _FITS_BLOCK) * _FITS_BLOCK


def read_header(path) -> Dict[str, object]:
    """The map extension's header as a dict (keys upper-case), checked to be a NESTED HEALPix map."""
    return dict(_read_table_header(Path(path))[0])


def read_nested_map(path, dtype=np.float64) -> Tuple[np.ndarray, Dict[str, object]]:
    """The whole map, NESTED order, shape (12 nside^2,), and its header."""
    header = read_header(path)
    values = hp.read_map(str(path), nest=True, dtype=dtype)
    if values.size != hp.nside2npix(int(header["NSIDE"])):
        raise InputError(f"{path}: {values.size} pixels, expected 12*NSIDE^2 for NSIDE={header['NSIDE']}")
    return values, header


def read_nested_range(path, start: int, stop: int, dtype=np.float64) -> np.ndarray:
    """Pixels ``[start, stop)`` of a NESTED map as ``dtype``, shape (stop - start,): one header parse and one
    ``pread`` (:class:`MapRangeReader`; for many ranges of one map, keep a reader open instead)."""
    _, layout = read_header_and_layout(path)
    values = np.empty(max(stop - start, 0), dtype=dtype)  # a bad range is refused by the reader
    with MapRangeReader(layout) as reader:
        reader.read_into(start, stop, values)
    return values


@dataclass(frozen=True)
class MapLayout:
    """Where the pixels of a NESTED map lie in its FITS file.

    healpy writes a map as one binary-table column of big-endian values in rows of (typically) 1024
    pixels, with no heap: the pixels are one contiguous array of ``npix`` items of ``dtype`` starting
    ``data_offset`` bytes into the file.
    """

    path: str
    data_offset: int  # bytes from the start of the file to pixel 0
    dtype: str  # the stored numpy type, e.g. '>f4'
    npix: int


def read_header_and_layout(path) -> Tuple[fits.Header, MapLayout]:
    """The map extension's header, checked as by :func:`read_header` but kept as astropy's Header (a
    card's value is parsed when it is first read: converting all of them to a dict took 0.24 ms per
    sheet, half the time of this function, when the kappa stage reads 4-7 of ~25 keys), and the
    :class:`MapLayout` of its pixels, in one open; InputError naming the file when the table is not one
    unscaled column of all pixels."""
    path = Path(path)
    header, data_offset = _read_table_header(path)
    npix = hp.nside2npix(int(header["NSIDE"]))
    scaled = "TSCAL1" in header or "TZERO1" in header
    if header.get("TFIELDS") != 1 or header.get("PCOUNT", 0) != 0 or scaled or "TFORM1" not in header:
        raise InputError(f"{path}: the map table has TFIELDS = {header.get('TFIELDS')}, PCOUNT = "
                         f"{header.get('PCOUNT', 0)}{', scaled values' if scaled else ''}; expected one "
                         "unscaled column of all pixels, as healpy write_map writes one full-sky map "
                         "(a partial-sky file has a PIXEL column too)")
    column = fits.Column(name="T", format=header["TFORM1"])
    stored = np.dtype(column.dtype.base).newbyteorder(">")  # FITS tables are big-endian
    stored_pixels = int(header["NAXIS2"]) * int(column.format.repeat)
    if stored_pixels != npix:
        raise InputError(f"{path}: {stored_pixels} pixels, expected 12*NSIDE^2 = {npix} for "
                         f"NSIDE={header['NSIDE']}")
    return header, MapLayout(str(path), data_offset, stored.str, npix)


class MapRangeReader:
    """Pixel ranges of one map read straight from its file with ``pread`` into float64.

    The FITS header is parsed once (by :func:`read_header_and_layout`), not per range: astropy takes 2-6 ms
    to parse one, more than reading 2^18 pixels from the page cache. Use as a context manager (it holds
    the file open).
    """

    def __init__(self, layout: MapLayout):
        self.layout = layout
        self._stored = np.dtype(layout.dtype)
        self._buffer = np.empty(0, dtype=self._stored)
        self._fd = os.open(layout.path, os.O_RDONLY)

    def __enter__(self) -> "MapRangeReader":
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self._fd)

    def will_need(self, start: int, stop: int) -> None:
        """Ask the kernel to read pixels ``[start, stop)`` into the page cache in the background
        (``posix_fadvise`` WILLNEED; a no-op where there is none), so that a later :meth:`read_into` of
        them does not wait for the disk."""
        if hasattr(os, "posix_fadvise") and stop > start:
            itemsize = self._stored.itemsize
            os.posix_fadvise(self._fd, self.layout.data_offset + start * itemsize, (stop - start) * itemsize,
                             os.POSIX_FADV_WILLNEED)

    def read_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Pixels ``[start, stop)`` converted into ``out`` (shape (stop - start,), any float type). An
        ``out`` of the stored type (e.g. ``'>f4'``), contiguous, receives the file's bytes directly."""
        if not 0 <= start <= stop <= self.layout.npix:
            raise ValueError(f"pixel range [{start}, {stop}) outside the map's {self.layout.npix} pixels")
        if out.shape != (stop - start,):
            raise ValueError(f"output of shape {out.shape} for the {stop - start} pixels [{start}, {stop})")
        direct = out.dtype == self._stored and out.flags.c_contiguous
        if not direct and self._buffer.size < stop - start:
            self._buffer = np.empty(stop - start, dtype=self._stored)
        raw = out if direct else self._buffer[:stop - start]
        view = memoryview(raw).cast("B")
        offset = self.layout.data_offset + start * self._stored.itemsize
        done = 0
        while done < view.nbytes:
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise InputError(f"{self.layout.path}: file ends inside the map data (pixel "
                                 f"{start + done // self._stored.itemsize}); expected {self.layout.npix} "
                                 "pixels: truncated or still being written")
            done += got
        if not direct:
            np.copyto(out, raw)


# Pixels per block when write_nested_map streams an in-memory map (4-8 MiB converted at a time).
_WRITE_BLOCK = 1 << 20
# Bytes of a map written between two start_writeback calls (the kernel writes them out in the background).
_WRITEBACK_BYTES = 32 << 20
# healpy write_map stores a map of more than 1024 pixels as rows of 1024 (its default fits_IDL=True).
_HEALPY_ROW = 1024
# Stored types whose FITS bytes are the big-endian values (not bool: a FITS logical column stores 'T'/'F').
_FITS_CARD = 80  # bytes of one FITS header card
_FITS_BLOCK = 2880  # FITS files are made of records of this many bytes
_MAP_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int16, np.int32, np.int64, np.float32, np.float64))


def _healpy_map_header(nside: int, dtype: np.dtype, cards) -> fits.Header:
    """The binary-table header healpy ``write_map(m, nest=True, dtype=dtype, extra_header=cards)`` writes
    for a full-sky map of ``nside``: built by astropy from an empty table of healpy's column, then the
    row count and healpy's keys set as ``healpy.fitsfunc.write_map`` sets them (healpy 1.20; the tests
    compare the bytes with healpy's). Deliberately not healpy itself: it builds the header only together
    with a table holding the whole map."""
    npix = hp.nside2npix(nside)
    letter = hp.fitsfunc.getformat(dtype)  # 'E', 'D', 'B', ...: healpy's own dtype -> TFORM rule
    per_row = _HEALPY_ROW if npix > _HEALPY_ROW else 1
    # healpy names the single column "T": it zips its default name "TEMPERATURE" as a sequence of maps.
    column = fits.Column(name="T", format=f"{per_row}{letter}" if per_row > 1 else letter)
    header = fits.BinTableHDU.from_columns([column], nrows=0).header
    header["NAXIS2"] = npix // per_row
    header["PIXTYPE"] = ("HEALPIX", "HEALPIX pixelisation")
    header["ORDERING"] = ("NESTED", "Pixel ordering scheme, either RING or NESTED")
    header["EXTNAME"] = ("xtension", "name of this binary table extension")
    header["NSIDE"] = (nside, "Resolution parameter of HEALPIX")
    header["FIRSTPIX"] = (0, "First pixel # (0 based)")
    header["LASTPIX"] = (npix - 1, "Last pixel # (0 based)")
    header["INDXSCHM"] = ("IMPLICIT", "Indexing: IMPLICIT or EXPLICIT")
    header["OBJECT"] = ("FULLSKY", "Sky coverage, either FULLSKY or PARTIAL")
    for key, value, comment in cards:
        header[key] = (value, comment)
    return header


def write_nested_map_blocks(path, blocks: Iterable[np.ndarray], nside: int,
                            header: Optional[Iterable[Tuple[str, object, str]]] = None, dtype=np.float32,
                            late_cards: Optional[Callable[[], Iterable[Tuple[str, object, str]]]] = None) -> Path:
    """Write a NESTED full-sky map of ``nside`` from its consecutive pixel blocks, atomically.

    ``blocks``: 1-D arrays of any sizes (empty ones allowed) that together hold the ``12 nside^2`` pixels
    in NESTED order; each is converted to ``dtype`` (big-endian) and written before the next is asked
    for, so only one block and its converted copy are in memory. ``header``: extra cards (key, value,
    comment), keys cut to 8 upper-case characters. The file has the bytes of healpy
    ``write_map(values, nest=True, dtype=dtype, extra_header=header)``: a primary HDU, then a binary
    table of one column in rows of 1024 pixels (one pixel per row for maps of <= 1024 pixels), zero
    padding to 2880-byte records. It is written as ``*.inprogress``, fsynced and renamed: blocks that do
    not add up to ``12 nside^2`` pixels (ValueError naming the file) or an error raised by ``blocks``
    leave no final file.

    ``late_cards``: called once every block is written, returns cards whose values are known only then
    (e.g. the mean of the pixels); each replaces the card of the same key in ``header`` (written with a
    placeholder value) in the temporary file before the rename, so the file has the bytes it would
    have had with the final values in ``header``.
    """
    with nested_map_writer(path, nside, header, dtype, late_cards) as write:
        for block in blocks:
            write(block)
            del block  # not alive while the next block is made
    return Path(path)


def _map_file_plan(path: Path, nside: int, header, dtype) -> Tuple[int, np.dtype, fits.Header]:
    """(npix, stored big-endian dtype, table header) of a map file to write; ValueError naming ``path``
    for an nside that is not a power of 2 or a dtype healpy cannot store."""
    if not hp.isnsideok(nside, nest=True):
        raise ValueError(f"{path}: nside {nside} is not a power of 2, as a NESTED map needs")
    if np.dtype(dtype) not in _MAP_DTYPES:
        raise ValueError(f"{path}: cannot write a map of dtype {np.dtype(dtype)}; expected one of "
                         f"{', '.join(t.name for t in _MAP_DTYPES)}")
    cards = [(key[:8].upper(), value, comment) for key, value, comment in (header or [])]
    # FITS tables are big-endian
    return hp.nside2npix(nside), np.dtype(dtype).newbyteorder(">"), _healpy_map_header(nside, np.dtype(dtype), cards)


@contextlib.contextmanager
def nested_map_writer(path, nside: int, header: Optional[Iterable[Tuple[str, object, str]]] = None,
                      dtype=np.float32, late_cards: Optional[Callable[[], Iterable[Tuple[str, object, str]]]] = None):
    """:func:`write_nested_map_blocks` driven from outside: yields ``write(block)``, to be called with the
    consecutive pixel blocks; the file is complete and renamed when the ``with`` block ends (several maps
    can be written side by side, each from its share of the same inputs)."""
    path = Path(path)
    npix, stored, table_header = _map_file_plan(path, nside, header, dtype)
    written = 0
    with atomic_output(path) as temporary:
        # astropy writes healpy's default primary HDU, the header, and the zero padding once the header's
        # NAXIS1 x NAXIS2 bytes are in; it only takes bytes (a uint8 array) for a table.
        with fits.StreamingHDU(str(temporary), table_header) as stream:

            def write(block) -> None:
                nonlocal written
                block = np.asarray(block)
                if block.ndim != 1:
                    raise ValueError(f"{path}: pixel block of shape {block.shape}; expected 1-D blocks")
                if written + block.size > npix:
                    raise ValueError(f"{path}: the pixel blocks hold more than the 12*nside^2 = {npix} pixels "
                                     f"of nside {nside}")
                if block.size:
                    stream.write(np.ascontiguousarray(block.astype(stored, copy=False)).view(np.uint8))
                    before, after = written * stored.itemsize, (written + block.size) * stored.itemsize
                    if after // _WRITEBACK_BYTES > before // _WRITEBACK_BYTES:
                        start_writeback(temporary)  # every _WRITEBACK_BYTES: the final fsync waits for less
                    written += block.size

            yield write
        if written != npix:
            raise ValueError(f"{path}: the pixel blocks hold {written} pixels; expected 12*nside^2 = {npix} "
                             f"for nside {nside}")
        if late_cards is not None:
            _replace_cards(temporary, [(key[:8].upper(), value, comment) for key, value, comment in late_cards()])


def _replace_cards(path: Path, cards: Iterable[Tuple[str, object, str]]) -> None:
    """Overwrite, in place, the header card of each key with ``fits.Card(key, value, comment)``.

    FITS header cards are fixed 80-byte records, so a card whose new image is one record replaces the
    old one byte for byte. Each key must occur exactly once in the file's headers (ValueError otherwise).
    """
    with open(path, "r+b") as handle:
        headers, ends = b"", 0
        while ends < 2:  # the primary header and the table header, each closed by an END card
            record = handle.read(_FITS_CARD)
            if len(record) < _FITS_CARD:
                raise ValueError(f"{path}: the file ends inside its headers")
            headers += record
            ends += record.startswith(b"END" + b" " * 5)
        for key, value, comment in cards:
            image = fits.Card(key, value, comment).image.encode("ascii")
            slots = [offset for offset in range(0, len(headers), _FITS_CARD)
                     if headers[offset:offset + 10] == key.ljust(8).encode("ascii") + b"= "]
            if len(image) != _FITS_CARD or len(slots) != 1:
                raise ValueError(f"{path}: cannot replace header card {key}: found {len(slots)} card(s) with "
                                 f"that key, and the new card takes {len(image)} bytes (expected one card of "
                                 f"{_FITS_CARD})")
            handle.seek(slots[0])
            handle.write(image)


def allocate_nested_map(path, nside: int, header: Optional[Iterable[Tuple[str, object, str]]] = None,
                        dtype=np.float32) -> MapLayout:
    """Create ``path`` as a map of ``nside`` with every pixel 0, to be filled range by range, in any order
    and by any process, with :class:`MapRangeWriter`; returns its :class:`MapLayout`.

    The file has the headers :func:`write_nested_map` writes (``header``: the same extra cards) and its
    final size (data zero-padded to 2880-byte records), its disk blocks reserved with
    ``posix_fallocate`` where the file system supports it, so a full disk is reported here (OSError
    ENOSPC) rather than in the middle of a stage. Once every range is written, the file has
    the bytes :func:`write_nested_map` gives for the same pixels. The caller renames it into place
    (:func:`lensing_ssc.io.atomic.commit`); this function does not write atomically.
    """
    path = Path(path)
    npix, stored, table_header = _map_file_plan(path, nside, header, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # StreamingHDU would append to it
    with fits.StreamingHDU(str(path), table_header):  # writes the primary HDU and the table header
        pass
    data_offset = path.stat().st_size
    data_bytes = npix * stored.itemsize
    size = data_offset + -(-data_bytes // _FITS_BLOCK) * _FITS_BLOCK
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, size)
        try:
            os.posix_fallocate(fd, data_offset, size - data_offset)
        except OSError as exc:
            if is_disk_full(exc):
                raise
            # any other refusal: the file system cannot reserve blocks; a full disk shows in the writes
    finally:
        os.close(fd)
    return MapLayout(str(path), data_offset, stored.str, npix)


class MapRangeWriter:
    """Pixel ranges written into a map made by :func:`allocate_nested_map`, with ``pwrite``: ranks write
    their own ranges of one file side by side. Each write asks the kernel to start writing its pages out
    (:func:`lensing_ssc.io.atomic.start_writeback`), so :meth:`sync` finds little left to wait for. Use as
    a context manager; ``sync()`` before the file is renamed into place."""

    def __init__(self, layout: MapLayout):
        self.layout = layout
        self._stored = np.dtype(layout.dtype)
        self._buffer = np.empty(0, dtype=self._stored)
        self._fd = os.open(layout.path, os.O_WRONLY)

    def __enter__(self) -> "MapRangeWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self._fd)

    def write(self, start: int, values: np.ndarray) -> np.ndarray:
        """Write ``values`` (1-D, any real type, converted to the stored type) as pixels ``[start, start +
        len(values))``; returns what was written (the stored big-endian values, contiguous; a buffer the
        next call overwrites)."""
        values = np.asarray(values)
        stop = start + values.size
        if values.ndim != 1 or not 0 <= start <= stop <= self.layout.npix:
            raise ValueError(f"{self.layout.path}: cannot write {values.shape} values at pixel {start} of a map "
                             f"of {self.layout.npix} pixels")
        if self._buffer.size < values.size:
            self._buffer = np.empty(values.size, dtype=self._stored)
        # Into a buffer kept from call to call: a fresh array per range costs its page faults (numpy 2.4:
        # 2.6 ms for 5 ranges of 2^20 float64 pixels, against 4.4 ms casting to the native type and
        # swapping the bytes after, and 8-11 ms with a new array each time).
        stored = self._buffer[:values.size]
        np.copyto(stored, values, casting="unsafe")  # as astype, which write_nested_map uses
        data = memoryview(stored).cast("B")
        offset = self.layout.data_offset + start * self._stored.itemsize
        done = 0
        while done < data.nbytes:
            done += os.pwrite(self._fd, data[done:], offset + done)
        start_writeback_fd(self._fd, offset, data.nbytes)
        return stored

    def sync(self) -> None:
        """Wait until every range written through this writer is on disk (``fdatasync``)."""
        os.fdatasync(self._fd)


def write_nested_map(path, values: np.ndarray, header: Optional[Iterable[Tuple[str, object, str]]] = None,
                     dtype=np.float32) -> Path:
    """Write a NESTED map (shape (12 nside^2,)) atomically (``*.inprogress`` then rename); ``header``
    cards (key, value, comment). The bytes of healpy ``write_map``: see :func:`write_nested_map_blocks`."""
    values = np.asarray(values)
    try:
        nside = hp.npix2nside(values.size)
    except ValueError:
        raise ValueError(f"{path}: {values.size} values are not a full-sky HEALPix map (12*nside^2 pixels)") from None
    blocks = (values[start:start + _WRITE_BLOCK] for start in range(0, values.size, _WRITE_BLOCK))
    return write_nested_map_blocks(path, blocks, nside, header, dtype)
