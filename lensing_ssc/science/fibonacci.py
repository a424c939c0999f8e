"""Patch centres on the sphere: Fibonacci lattice, pole cut, diamond footprints, non-overlap optimiser.

Reproduces SCIENCE.md §4.1-4.2.  Angles are radians unless a name ends in ``_deg``; ``theta`` is the
colatitude in [0, pi], ``phi`` the longitude in [0, 2 pi).  A patch of side ``S`` degrees has the
footprint of a square of side S whose diagonals lie along the local meridian and the local east-west
great circle (a "diamond"), vertices at angular distance ``radians(S)/sqrt(2)`` from the centre.
"""

import numpy as np
import healpy as hp
from scipy.spatial.transform import Rotation

GOLDEN_RATIO = (1.0 + np.sqrt(5.0)) / 2.0

# Lattice sizes of the original's centre files ``fibonacci_points_{S}.txt`` (SCIENCE.md §4.1).  They
# define the published patch sets; fibonacci_point_count reproduces all but S = 5 (see there).
ORIGINAL_POINT_COUNTS = {5: 1083, 10: 273, 15: 121, 20: 67, 25: 43, 30: 31}


def _check_patch_size(patch_size_deg: float) -> float:
    """Return ``patch_size_deg`` as float; it must leave some sky after the pole cut (0 < S*sqrt2 < 90 deg)."""
    size = float(patch_size_deg)
    if not 0.0 < size * np.sqrt(2.0) < 90.0:
        raise ValueError(f"patch_size_deg must be in (0, {90 / np.sqrt(2):.2f}) deg, got {patch_size_deg!r}")
    return size


def fibonacci_grid(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Fibonacci lattice of ``n_points`` (odd, >= 3) points on the sphere (SCIENCE.md §4.1).

    With N = (n-1)/2 and k = -N..N ascending: ``theta_k = arcsin(2k/(2N+1)) + pi/2`` and
    ``phi_k = (2 pi k / golden_ratio) mod 2 pi``.

    Returns ``(theta, phi)``, each float64 of shape (n_points,), radians, rows in ascending k
    (theta ascending from near 0 to near pi).
    """
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)):
        raise ValueError(f"n_points must be an odd integer >= 3, got {n_points!r}")
    if n_points < 3 or n_points % 2 == 0:
        raise ValueError(f"n_points must be an odd integer >= 3, got {n_points}")
    half = (int(n_points) - 1) // 2
    k = np.arange(-half, half + 1)
    theta = np.arcsin(2 * k / (2 * half + 1)) + np.pi / 2
    phi = np.mod(2 * np.pi * k / GOLDEN_RATIO, 2 * np.pi)
    return theta, phi


def valid_centers(theta: np.ndarray, phi: np.ndarray, patch_size_deg: float) -> np.ndarray:
    """Pole cut of SCIENCE.md §4.1: True where ``r < theta < pi - r``, ``r = radians(S) * sqrt(2)``.

    ``theta``, ``phi``: radians, same shape (phi is only checked for shape).  Returns a bool mask of
    that shape.
    """
    size = _check_patch_size(patch_size_deg)
    theta = np.asarray(theta, dtype=float)
    if np.shape(phi) != theta.shape:
        raise ValueError(f"theta and phi must have the same shape, got {theta.shape} and {np.shape(phi)}")
    cut = np.radians(size) * np.sqrt(2.0)
    return (theta > cut) & (theta < np.pi - cut)


def patch_footprint_vertices(theta_c: float, phi_c: float, patch_size_deg: float) -> np.ndarray:
    """Unit vectors of the 4 footprint vertices of a patch centred on ``(theta_c, phi_c)`` [rad].

    The base diamond around ``(pi/2, 0)`` has vertices ``(pi/2, +h), (pi/2 + h, 0), (pi/2, -h),
    (pi/2 - h, 0)`` with ``h = radians(S)/sqrt(2)``; it is carried to the centre by the original's
    rotation ``R = R(n_theta, pi/2 - theta_c) @ R_z(phi_c)`` with axis ``n_theta = (sin phi_c, -cos phi_c, 0)``
    (counter-clockwise rotations), which maps ``(pi/2, 0)`` to ``(theta_c, phi_c)`` and keeps the
    meridian vertices on the centre's meridian.  Returns float64 array of shape (4, 3).
    """
    half_diag = np.radians(_check_patch_size(patch_size_deg)) / np.sqrt(2.0)
    if not 0.0 <= theta_c <= np.pi:
        raise ValueError(f"theta_c must be a colatitude in [0, pi] rad, got {theta_c!r}")
    base_theta = np.pi / 2 + np.array([0.0, half_diag, 0.0, -half_diag])
    base_phi = np.array([half_diag, 0.0, -half_diag, 0.0])
    base = hp.ang2vec(base_theta, base_phi)
    axis = np.array([np.sin(phi_c), -np.cos(phi_c), 0.0])
    rotation = Rotation.from_rotvec((np.pi / 2 - theta_c) * axis) * Rotation.from_rotvec([0.0, 0.0, phi_c])
    return rotation.apply(base)


def footprints_disjoint(theta: np.ndarray, phi: np.ndarray, patch_size_deg: float, nside: int) -> bool:
    """True when no HEALPix pixel centre lies inside two of the given patches' footprints.

    Pixels of a footprint are ``hp.query_polygon(nside, vertices, nest=True, inclusive=False)``
    (SCIENCE.md §4.2, no margin).  Stops at the first pixel hit twice.  ``theta``, ``phi``: radians,
    shape (P,).
    """
    counts = np.zeros(hp.nside2npix(nside), dtype=np.int32)
    for theta_c, phi_c in zip(np.asarray(theta, dtype=float), np.asarray(phi, dtype=float)):
        vertices = patch_footprint_vertices(theta_c, phi_c, patch_size_deg)
        pixels = hp.query_polygon(nside, vertices, inclusive=False, nest=True)
        counts[pixels] += 1
        if np.any(counts[pixels] > 1):
            return False
    return True


def _lattice_is_feasible(n_points: int, patch_size_deg: float, nside: int) -> bool:
    """``footprints_disjoint`` for the valid centres of the ``n_points`` Fibonacci lattice."""
    theta, phi = fibonacci_grid(n_points)
    keep = valid_centers(theta, phi, patch_size_deg)
    return footprints_disjoint(theta[keep], phi[keep], patch_size_deg, nside)


def fibonacci_point_count(patch_size_deg: float, nside: int = 1024) -> int:
    """Largest odd lattice size N whose valid (pole-cut) patches have pairwise disjoint footprints.

    Feasibility is that of SCIENCE.md §4.2: footprint pixels from ``hp.query_polygon(nside, ...,
    nest=True, inclusive=False)``, no pixel may belong to two patches.  Feasibility is not monotonic
    in N (for S = 5 deg at nside 1024, 1093 fails but 1095 and 1101 pass), so instead of the
    original's bisection this scans odd N downwards from an area bound: above it the valid
    footprints (flat area ``radians(S)**2`` each, an underestimate of the spherical area) would
    cover more than 1.1 x the sphere, so they must overlap.  Infeasible N fail at their first
    overlap, which keeps the scan cheap.  For S = 10, 15, 20, 25, 30 deg at nside 1024 this gives
    the original's 273, 121, 67, 43, 31 (the bisection's answers there too); for S = 5 it gives 1101
    where the original file has 1083 (feasible, but not the largest; see ``patch_centers``).
    Coarser nside does not reproduce these counts (at nside 256, S = 10 gives 277).
    """
    size = _check_patch_size(patch_size_deg)
    if isinstance(nside, bool) or not isinstance(nside, (int, np.integer)) or not hp.isnsideok(nside, nest=True):
        raise ValueError(f"nside must be a power of 2, got {nside!r}")
    pole_cut = np.radians(size) * np.sqrt(2.0)
    # The valid fraction of a lattice is ~cos(pole_cut) (the sky area between the cuts).
    n_start = int(1.1 * 4 * np.pi / (np.radians(size) ** 2 * np.cos(pole_cut)))
    n_start += 1 - n_start % 2  # odd
    for n_points in range(n_start, 2, -2):
        if _lattice_is_feasible(n_points, size, nside):
            return n_points
    raise ValueError(f"no lattice of >= 3 points is feasible for patch_size_deg={patch_size_deg}")


def patch_centers(patch_size_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Valid patch centres ``(theta, phi)`` [rad], each shape (P,), in lattice (ascending k) order.

    The lattice size is the original's for the sizes of ``ORIGINAL_POINT_COUNTS`` (S = 10 deg:
    273 points, P = 265; S = 5 deg keeps the original 1083 although the optimiser finds 1101), and
    ``fibonacci_point_count(S)`` at nside 1024 otherwise.
    """
    size = _check_patch_size(patch_size_deg)
    if size.is_integer() and int(size) in ORIGINAL_POINT_COUNTS:
        n_points = ORIGINAL_POINT_COUNTS[int(size)]
    else:
        n_points = fibonacci_point_count(size)
    theta, phi = fibonacci_grid(n_points)
    keep = valid_centers(theta, phi, size)
    return theta[keep], phi[keep]
