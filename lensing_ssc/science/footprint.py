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

import healpy as hp
import numpy as np

from lensing_ssc.science.fibonacci import patch_footprint_vertices

# Pixels per block in the neighbour look-ups: 8 int64 neighbours per pixel -> 64 MB per block.
_NEIGHBOUR_BLOCK = 1 << 20


def _check_mask(mask, name: str) -> np.ndarray:
    """``mask`` as a bool array of shape (12 nside^2,); ValueError naming ``name`` otherwise."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 1 or not hp.isnpixok(mask.size):
        raise ValueError(f"{name} must be a boolean NESTED HEALPix map of shape (12*nside**2,), "
                         f"got dtype {mask.dtype} and shape {mask.shape}")
    return mask


def _all_neighbours_in(mask: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """True for each of ``pixels`` (NESTED) whose 7 or 8 neighbours all lie in ``mask``; bool (n,)."""
    nside = hp.npix2nside(mask.size)
    neighbours = hp.get_all_neighbours(nside, pixels, nest=True)  # (8, n), -1 where a pixel has 7
    return np.all((neighbours < 0) | mask[np.maximum(neighbours, 0)], axis=0)


def _pixel_blocks(mask: np.ndarray):
    """The NESTED indices of the True pixels of ``mask``, one block of the map at a time (int64 arrays):
    index arrays of a whole map would cost 8 B per pixel (24 GB for a half sky at nside 8192)."""
    for start in range(0, mask.size, _NEIGHBOUR_BLOCK):
        found = np.flatnonzero(mask[start:start + _NEIGHBOUR_BLOCK])
        if found.size:
            yield found + start


def _where_all_neighbours_in(mask: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Bool map: the ``candidates`` (bool map) whose 7 or 8 neighbours all lie in ``mask``."""
    result = np.zeros_like(mask)
    for pixels in _pixel_blocks(candidates):
        result[pixels[_all_neighbours_in(mask, pixels)]] = True
    return result


def _neighbours_of(mask: np.ndarray) -> np.ndarray:
    """Bool map: the NESTED neighbours of the pixels of ``mask`` (may include pixels of ``mask``).

    Marked in a boolean map rather than collected with ``np.unique``: on a random 20 % of the pixels
    at nside 512, numpy 2.4's hash-based unique made :func:`observed_footprint` take 14.6 s, the map
    1.2 s (same result).
    """
    nside = hp.npix2nside(mask.size)
    marked = np.zeros_like(mask)
    for pixels in _pixel_blocks(mask):
        neighbours = hp.get_all_neighbours(nside, pixels, nest=True)
        marked[neighbours[neighbours >= 0]] = True
    return marked


def observed_footprint(reached) -> tuple[np.ndarray, int]:
    """The observed footprint of a light cone from the pixels its slices reached (module docstring).

    ``reached``: bool NESTED map (12 nside^2,), True where any slice holds mass. Returns
    ``(observed, holes_filled)``: a bool NESTED map of the same shape, and the number of isolated
    unreached pixels counted as reached. Neighbour look-ups run over the smaller of the reached and
    unreached sets, in blocks of the map (a full sky costs nothing); memory: a few bool maps (~5 B
    per pixel) and 2^20-pixel blocks.
    """
    reached = _check_mask(reached, "reached")
    n_reached = int(np.count_nonzero(reached))
    if n_reached == reached.size:
        return reached.copy(), 0
    # A hole has only reached neighbours, so it is itself a neighbour of a reached pixel.
    if reached.size - n_reached <= n_reached:
        candidates = ~reached
    else:
        candidates = _neighbours_of(reached)
        candidates &= ~reached
    holes = _where_all_neighbours_in(reached, candidates)
    del candidates
    holes_filled = int(np.count_nonzero(holes))
    filled = reached | holes
    del holes
    n_inside = int(np.count_nonzero(filled))
    if n_inside <= filled.size - n_inside:
        observed = _where_all_neighbours_in(filled, filled)
    else:
        observed = filled & ~_neighbours_of(~filled)
    return observed, holes_filled


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
