"""Sky footprint of a light cone on the HEALPix sphere, and which patches lie inside it.

A FastPM light cone need not cover the whole sky (``lc_fov`` < 360 deg, a subset of octants). The
footprint is derived from the data, not from the simulation parameters:

1. *reached*: the pixels that at least one slice put mass into (the union over the sheets);
2. isolated empty pixels inside the light cone (unreached pixels whose 8 neighbours are all reached:
   sparse sampling, not the light-cone edge) count as reached ("holes filled");
3. *observed* = the reached pixels whose 8 neighbours are all reached. This one-pixel erosion drops
   the pixels that the light-cone boundary cuts: only part of their area was inside the light cone,
   so their mass, and their overdensity, are too low. For a boundary that is straight on the pixel
   scale this is exact: a pixel cut by the boundary always has a neighbour entirely outside it
   (verified on the real 10-deg FastPM cone at nside 256: the 1404 observed pixels are exactly the
   pixels whose whole area lies within 5 deg of the cone axis).

Maps are NESTED boolean arrays of shape (12 nside^2,). Angles: radians unless a name ends in ``_deg``.
"""
from __future__ import annotations

from typing import Callable, Tuple

import healpy as hp
import numpy as np

from lensing_ssc.science.fibonacci import patch_footprint_vertices

# (index, count): which blocks of the map a worker looks at when the work is shared (see observed_footprint_bits)
Share = Tuple[int, int]
# Pixels per block in the neighbour look-ups: 8 int64 neighbours per pixel -> 4 MiB per block.
_NEIGHBOUR_BLOCK = 1 << 16


def _check_mask(mask, name: str) -> np.ndarray:
    """``mask`` as a bool array of shape (12 nside^2,); ValueError naming ``name`` otherwise."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 1 or not hp.isnpixok(mask.size):
        raise ValueError(f"{name} must be a boolean NESTED HEALPix map of shape (12*nside**2,), "
                         f"got dtype {mask.dtype} and shape {mask.shape}")
    return mask


# The maps below are packed bits (``np.packbits`` of the bool map: uint8 (npix / 8,), pixel p is bit
# 7 - p % 8 of byte p // 8), 1/8 B per pixel: at nside 8192 a bool map is 805 MB, its bits 101 MB.

def _bits_at(bits: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The bits of ``pixels`` (int64, any shape) as a bool array of the same shape."""
    return (bits[pixels >> 3] >> (7 - (pixels & 7)).astype(np.uint8)) & np.uint8(1) > 0


def count_bits(bits: np.ndarray) -> int:
    """Number of set bits of a packed map."""
    return int(np.bitwise_count(bits).sum(dtype=np.int64))


def _bit_blocks(bits: np.ndarray, npix: int, share: Share):
    """(start, NESTED indices of the set pixels in [start, start + _NEIGHBOUR_BLOCK)) for the blocks of
    this share: block k belongs to share ``(k % count, count)``."""
    index, count = share
    for start in range(index * _NEIGHBOUR_BLOCK, npix, count * _NEIGHBOUR_BLOCK):
        stop = min(npix, start + _NEIGHBOUR_BLOCK)
        found = np.flatnonzero(np.unpackbits(bits[start // 8:(stop + 7) // 8], count=stop - start))
        if found.size:
            yield start, found + start


def _where_all_neighbours_in(mask: np.ndarray, candidates: np.ndarray, npix: int, share: Share) -> np.ndarray:
    """Bits: the ``candidates`` of this share's blocks whose 7 or 8 neighbours all lie in ``mask`` (both
    packed bits)."""
    nside = hp.npix2nside(npix)
    result = np.zeros_like(mask)
    for start, pixels in _bit_blocks(candidates, npix, share):
        neighbours = hp.get_all_neighbours(nside, pixels, nest=True)  # (8, n), -1 where a pixel has 7
        keep = pixels[np.all((neighbours < 0) | _bits_at(mask, np.maximum(neighbours, 0)), axis=0)]
        block = np.zeros(min(_NEIGHBOUR_BLOCK, npix - start), dtype=bool)
        block[keep - start] = True
        packed = np.packbits(block)
        result[start // 8:start // 8 + packed.size] |= packed
    return result


def _neighbours_of(mask: np.ndarray, npix: int, share: Share) -> np.ndarray:
    """Bits: the NESTED neighbours of the pixels of ``mask`` in this share's blocks (may include pixels of
    ``mask``).

    Set in a bit map rather than collected with ``np.unique``: on a random 20 % of the pixels at
    nside 512, numpy 2.4's hash-based unique made :func:`observed_footprint` take 14.6 s, a map 1.2 s.
    """
    nside = hp.npix2nside(npix)
    marked = np.zeros_like(mask)
    for start, pixels in _bit_blocks(mask, npix, share):
        neighbours = hp.get_all_neighbours(nside, pixels, nest=True).ravel()
        neighbours = neighbours[neighbours >= 0]
        # Most neighbours lie in the block itself (a NEST-aligned block is a square of the sphere):
        # those are marked in a bool block, the few beyond its edge bit by bit.
        block = np.zeros(min(_NEIGHBOUR_BLOCK, npix - start), dtype=bool)
        local = neighbours - start
        inside = (local >= 0) & (local < block.size)
        block[local[inside]] = True
        packed = np.packbits(block)
        marked[start // 8:start // 8 + packed.size] |= packed
        beyond = neighbours[~inside]
        np.bitwise_or.at(marked, beyond >> 3, (np.uint8(128) >> (beyond & 7).astype(np.uint8)))
    return marked


def observed_footprint_bits(reached: np.ndarray, npix: int, share: Share = (0, 1),
                            combine: Callable[[np.ndarray], np.ndarray] = lambda bits: bits) -> tuple[np.ndarray, int]:
    """:func:`observed_footprint` on packed bits: ``reached`` uint8 (ceil(npix / 8),) as ``np.packbits``
    of the bool NESTED map of ``npix = 12 nside^2`` pixels; returns ``(observed bits, holes_filled)``.

    Neighbour look-ups run over the smaller of the reached and unreached sets, in 2^16-pixel blocks
    (a full sky costs nothing); memory: four bit maps (1/2 B per pixel) and the blocks.

    Shared work: ``count`` workers (MPI ranks), each calling with the same ``reached`` and its own
    ``share = (index, count)``, look up the neighbours of every count-th block only; ``combine(bits)``
    must return the bitwise OR of ``bits`` over the workers (e.g. an MPI allreduce), and every worker
    gets the whole result.
    """
    reached = np.asarray(reached)
    if reached.dtype != np.uint8 or reached.shape != ((npix + 7) // 8,) or not hp.isnpixok(npix):
        raise ValueError(f"reached must be the packed bits (uint8, shape ({(npix + 7) // 8},)) of a NESTED "
                         f"HEALPix map of {npix} pixels, got dtype {reached.dtype} and shape {reached.shape}")
    tail = np.packbits(np.ones(npix % 8 or 8, dtype=bool))[0]  # the bits of the last byte that are pixels
    n_reached = count_bits(reached)
    if n_reached == npix:
        return reached.copy(), 0

    def complement(bits):
        flipped = ~bits
        flipped[-1] &= tail  # no pixels beyond npix
        return flipped

    # A hole has only reached neighbours, so it is itself a neighbour of a reached pixel.
    unreached = complement(reached)
    if npix - n_reached <= n_reached:
        candidates = unreached
    else:
        candidates = combine(_neighbours_of(reached, npix, share))
        candidates &= unreached
    del unreached
    holes = combine(_where_all_neighbours_in(reached, candidates, npix, share))
    del candidates
    holes_filled = count_bits(holes)
    filled = reached | holes
    del holes
    n_inside = count_bits(filled)
    if n_inside <= npix - n_inside:
        observed = combine(_where_all_neighbours_in(filled, filled, npix, share))
    else:
        observed = filled & complement(combine(_neighbours_of(complement(filled), npix, share)))
    return observed, holes_filled


def observed_footprint(reached) -> tuple[np.ndarray, int]:
    """The observed footprint of a light cone from the pixels its slices reached (module docstring).

    ``reached``: bool NESTED map (12 nside^2,), True where any slice holds mass. Returns
    ``(observed, holes_filled)``: a bool NESTED map of the same shape, and the number of isolated
    unreached pixels counted as reached. Computed on packed bits (:func:`observed_footprint_bits`).
    """
    reached = _check_mask(reached, "reached")
    observed, holes_filled = observed_footprint_bits(np.packbits(reached), reached.size)
    return np.unpackbits(observed, count=reached.size).astype(bool), holes_filled


def polygon_inside_footprint(observed, vertices) -> bool:
    """True when every pixel that a convex spherical polygon touches is observed.

    ``observed``: bool NESTED map (12 nside^2,); ``vertices``: unit vectors of the polygon corners,
    float array (n >= 3, 3), in order around the polygon. The pixels are
    ``hp.query_polygon(nside, vertices, inclusive=True, nest=True)``: all pixels overlapping the
    polygon (healpy's inclusive test may add a few pixels just outside, which only makes the answer
    conservative).
    """
    observed = _check_mask(observed, "observed")
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[0] < 3 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be unit vectors of shape (n >= 3, 3), got shape {vertices.shape}")
    pixels = hp.query_polygon(hp.npix2nside(observed.size), vertices, inclusive=True, nest=True)
    return bool(np.all(observed[pixels]))


def patches_inside_footprint(observed, theta, phi, patch_size_deg: float, margin_deg: float = 0.0) -> np.ndarray:
    """Which patches lie, with a margin, wholly inside the observed footprint.

    Each patch is the diamond footprint of ``fibonacci.patch_footprint_vertices`` (a square of side
    ``patch_size_deg`` [deg] centred on ``(theta, phi)`` [rad]) grown by ``margin_deg`` [deg] on every
    side (side ``patch_size_deg + 2 margin_deg``); it is inside when every pixel it touches is
    observed (``polygon_inside_footprint``). ``theta``, ``phi``: same shape (P,). Returns bool (P,).
    """
    theta = np.atleast_1d(np.asarray(theta, dtype=np.float64))
    phi = np.atleast_1d(np.asarray(phi, dtype=np.float64))
    if theta.shape != phi.shape or theta.ndim != 1:
        raise ValueError(f"theta and phi must be 1-D arrays of the same shape, got {theta.shape} and {phi.shape}")
    if not margin_deg >= 0.0:
        raise ValueError(f"margin_deg must be >= 0 deg, got {margin_deg!r}")
    observed = _check_mask(observed, "observed")
    side = float(patch_size_deg) + 2.0 * float(margin_deg)
    return np.array([polygon_inside_footprint(observed, patch_footprint_vertices(t, p, side))
                     for t, p in zip(theta, phi)], dtype=bool)
