"""Light-cone shells in scale factor, their geometry, and the overdensity of a mass sheet.

SCIENCE.md §2.1 and §2.3. Sheet ``i`` covers a in [edges[i], edges[i+1]] (``aemitIndex.edges``
of the usmesh, Decision 3); ``a_far = edges[i]`` is the far edge, ``a_near = edges[i+1]`` the near one.
Volumes are in (Mpc/h)^3 and distances in Mpc/h (BoxSize units), masses in 1e10 Msun/h.
"""
from __future__ import annotations

import numpy as np

from lensing_ssc.core.cosmology import comoving_distance_mpch


def shell_edges_from_aemit(edges, sheet_index):
    """Scale-factor edges ``(a_far, a_near) = (edges[i], edges[i+1])`` of sheet(s) ``sheet_index``.

    ``edges``: 1-D increasing array of the nslices + 1 slice edges (``aemitIndex.edges``);
    ``sheet_index``: int or integer array in [0, nslices). Returns floats or arrays shaped like
    ``sheet_index``.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError(f"edges must be a 1-D strictly increasing array of >= 2 scale factors, got {edges!r}")
    index = np.asarray(sheet_index)
    if not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"sheet_index must be an integer or integer array, got {sheet_index!r}")
    if np.any(index < 0) or np.any(index >= edges.size - 1):
        raise ValueError(f"sheet_index must lie in [0, {edges.size - 1}) for {edges.size} edges, got {sheet_index!r}")
    a_far, a_near = edges[index], edges[index + 1]
    if index.ndim == 0:
        return float(a_far), float(a_near)
    return a_far, a_near


def validate_scale_factor_edges(a_far, a_near):
    """Return ``(a_far, a_near)`` as float64 arrays after checking 0 < a_far < a_near <= 1, same shape."""
    a_far = np.asarray(a_far, dtype=np.float64)
    a_near = np.asarray(a_near, dtype=np.float64)
    if a_far.shape != a_near.shape:
        raise ValueError(f"a_far and a_near must have the same shape, got {a_far.shape} and {a_near.shape}")
    if not (np.all(a_far > 0) and np.all(a_near <= 1) and np.all(a_far < a_near)):
        raise ValueError(
            f"scale-factor edges must satisfy 0 < a_far < a_near <= 1, got a_far={a_far!r}, a_near={a_near!r}"
        )
    return a_far, a_near


def shell_geometry(cosmo, a_far, a_near) -> dict:
    """Redshifts, comoving distances and volume of shell(s) a in [a_far, a_near].

    Returns a dict of float64 arrays shaped like the inputs: ``z_far``, ``z_near`` (z = 1/a - 1),
    ``chi_far``, ``chi_near`` [Mpc/h] (chi_far > chi_near) and ``volume`` [(Mpc/h)^3], the full-sky
    shell volume 4 pi (chi_far^3 - chi_near^3) / 3. Per pixel use ``pixel_volume``.
    """
    a_far, a_near = validate_scale_factor_edges(a_far, a_near)
    z_far, z_near = 1.0 / a_far - 1.0, 1.0 / a_near - 1.0
    chi_far, chi_near = comoving_distance_mpch(cosmo, z_far), comoving_distance_mpch(cosmo, z_near)
    return {
        "z_far": z_far,
        "z_near": z_near,
        "chi_far": chi_far,
        "chi_near": chi_near,
        "volume": 4.0 * np.pi * (chi_far**3 - chi_near**3) / 3.0,
    }


def pixel_volume(chi_far_mpch, chi_near_mpch, npix: int):
    """Comoving volume [(Mpc/h)^3] of one of ``npix`` equal-area pixels of the shell between the distances."""
    if int(npix) != npix or npix <= 0:
        raise ValueError(f"npix must be a positive integer, got {npix!r}")
    chi_far = np.asarray(chi_far_mpch, dtype=np.float64)
    chi_near = np.asarray(chi_near_mpch, dtype=np.float64)
    if np.any(chi_near < 0) or np.any(chi_far <= chi_near):
        raise ValueError(
            f"need chi_far_mpch > chi_near_mpch >= 0, got chi_far_mpch={chi_far_mpch!r}, chi_near_mpch={chi_near_mpch!r}"
        )
    return 4.0 * np.pi * (chi_far**3 - chi_near**3) / (3.0 * npix)


def mean_matter_density(mass_table_1: float, nc: int, box_size: float) -> float:
    """Mean comoving matter density rhobar = m_p (NC / L)^3 [1e10 Msun/h / (Mpc/h)^3].

    ``mass_table_1``: particle mass [1e10 Msun/h] (usmesh ``MassTable[1]``); ``nc``: particles per side;
    ``box_size``: L [Mpc/h].
    """
    for name, value in (("mass_table_1", mass_table_1), ("nc", nc), ("box_size", box_size)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(mass_table_1) * (float(nc) / float(box_size)) ** 3


def overdensity(mass_map, npix: int, chi_far_mpch: float, chi_near_mpch: float, rhobar: float) -> np.ndarray:
    """Overdensity delta = M / (V_pix rhobar) - 1 of one sheet (§2.3), float64 of shape (npix,).

    ``mass_map``: mass per pixel [1e10 Msun/h], shape (npix,) in any pixel ordering (kept);
    ``chi_far_mpch``, ``chi_near_mpch``: shell edges [Mpc/h]; ``rhobar``: [1e10 Msun/h / (Mpc/h)^3].
    """
    mass = np.asarray(mass_map, dtype=np.float64)
    if mass.shape != (npix,):
        raise ValueError(f"mass_map must have shape ({npix},) to match npix, got {mass.shape}")
    if not np.isfinite(rhobar) or rhobar <= 0:
        raise ValueError(f"rhobar must be a positive number, got {rhobar!r}")
    expected_mass = pixel_volume(chi_far_mpch, chi_near_mpch, npix) * rhobar
    return mass / expected_mass - 1.0


def sheet_filename(index: int, nslices: int) -> str:
    """File name of sheet ``index``: ``delta-sheet-NN.fits`` (2 digits, 3 when nslices >= 1000; DESIGN §1)."""
    if int(nslices) != nslices or nslices <= 0:
        raise ValueError(f"nslices must be a positive integer, got {nslices!r}")
    if int(index) != index or not 0 <= index < nslices:
        raise ValueError(f"index must be an integer in [0, {nslices}), got {index!r}")
    width = 3 if nslices >= 1000 else 2
    return f"delta-sheet-{int(index):0{width}d}.fits"
