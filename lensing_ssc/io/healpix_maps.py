"""HEALPix maps on disk: NESTED FITS files read whole or by pixel range, written atomically.

Every map lensing_ssc writes carries ``ORDERING='NESTED'`` (SCIENCE.md Decision 2); reading a file
whose header ordering is missing or not NESTED is refused, because a silently re-ordered map looks
like white noise to every statistic.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import healpy as hp
import numpy as np
from astropy.io import fits

from lensing_ssc.core.errors import InputError
from lensing_ssc.io.atomic import atomic_output


def _check_map_header(path: Path, header) -> None:
    """InputError unless ``header`` (astropy Header or dict) is that of a NESTED HEALPix map."""
    ordering = str(header.get("ORDERING", "")).strip().upper()
    if ordering != "NESTED":
        raise InputError(f"{path}: header ORDERING is {ordering or 'missing'}; expected 'NESTED' "
                         "(lensing_ssc keeps maps NESTED end to end)")
    if "NSIDE" not in header:
        raise InputError(f"{path}: header has no NSIDE; expected a HEALPix map")


def _open_map(path: Path):
    """The FITS file opened (memory-mapped) with its map extension checked; use as a context manager."""
    try:
        hdus = fits.open(path, memmap=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read FITS map ({exc})") from None
    if len(hdus) < 2:
        hdus.close()
        raise InputError(f"{path}: cannot read FITS map (no binary table in HDU 1: truncated, or not a "
                         "HEALPix map)")
    try:
        _check_map_header(path, hdus[1].header)
    except InputError:
        hdus.close()
        raise
    return hdus


def read_header(path) -> Dict[str, object]:
    """The map extension's header as a dict (keys upper-case), checked to be a NESTED HEALPix map."""
    path = Path(path)
    with _open_map(path) as hdus:
        return dict(hdus[1].header)


def read_nested_map(path, dtype=np.float64) -> Tuple[np.ndarray, Dict[str, object]]:
    """The whole map, NESTED order, shape (12 nside^2,), and its header."""
    header = read_header(path)
    values = hp.read_map(str(path), nest=True, dtype=dtype)
    if values.size != hp.nside2npix(int(header["NSIDE"])):
        raise InputError(f"{path}: {values.size} pixels, expected 12*NSIDE^2 for NSIDE={header['NSIDE']}")
    return values, header


def read_nested_range(path, start: int, stop: int, dtype=np.float64) -> np.ndarray:
    """Pixels ``[start, stop)`` of a NESTED map, reading only the table rows that hold them (one open)."""
    path = Path(path)
    with _open_map(path) as hdus:
        npix = hp.nside2npix(int(hdus[1].header["NSIDE"]))
        if not 0 <= start <= stop <= npix:
            raise ValueError(f"pixel range [{start}, {stop}) outside the map's {npix} pixels")
        column = hdus[1].data.field(0)  # healpy stores the map as rows of (typically 1024) pixels
        per_row = column[0:1].size
        first_row, last_row = start // per_row, -(-stop // per_row)
        values = np.asarray(column[first_row:last_row]).reshape(-1)
        offset = start - first_row * per_row
        return values[offset:offset + (stop - start)].astype(dtype)


def write_nested_map(path, values: np.ndarray, header: Optional[Iterable[Tuple[str, object, str]]] = None,
                     dtype=np.float32) -> Path:
    """Write a NESTED map atomically (``*.inprogress`` then rename); ``header`` cards (key, value, comment)."""
    path = Path(path)
    cards = [(key[:8].upper(), value, comment) for key, value, comment in (header or [])]
    with atomic_output(path) as temporary:
        hp.write_map(str(temporary), values, nest=True, dtype=dtype, overwrite=True, extra_header=cards)
    return path
