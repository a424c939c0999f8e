"""Flat square patches cut from a full-sky HEALPix map, and the box-replication flag of each patch.

Extraction reproduces SCIENCE.md §4.3 (the original ``hp.gnomview`` + ``scipy.ndimage.rotate``
route) without building a matplotlib figure.  It is split in two so the geometry, which depends only
on (nside, centre, size, xsize), can be computed once and reused for every map:

* ``patch_pixel_indices``: RING pixel index of every pixel of the un-rotated gnomonic image;
* ``project_patch``: sample a map at those indices, rotate by 45 deg, crop the central square.

Angles: ``theta`` colatitude and ``phi`` longitude in radians; patch sizes in degrees; image
resolutions in arcmin per pixel.
"""

import functools

import numpy as np
import healpy as hp
from healpy.projector import GnomonicProj
from scipy import ndimage, special

# The gnomonic image is this much larger than the patch, so that the 45-deg-rotated central crop of
# xsize pixels (half-diagonal xsize/sqrt(2)) stays inside it with a 0.05*xsize margin.
_IMAGE_PADDING = 0.1 + np.sqrt(2.0)
_ROTATION_DEG = 45.0
# Below this patch side the rotated crop's corners reach the zero fill of the rotation for some
# xsize (2, 3, 6, 7, 10, 11, 15: checked with a constant map); from it on they never do.
MIN_XSIZE = 16


def gnomonic_image_size(xsize: int) -> int:
    """Side M [pixels] of the un-rotated gnomonic image for a patch of ``xsize`` pixels: ``int(xsize*(0.1+sqrt2))``.

    3101 for xsize 2048, as in the original.  ``xsize`` must be an integer >= ``MIN_XSIZE``.
    """
    if isinstance(xsize, bool) or not isinstance(xsize, (int, np.integer)) or xsize < MIN_XSIZE:
        raise ValueError(f"xsize must be an integer number of pixels >= {MIN_XSIZE}, got {xsize!r}")
    return int(xsize * _IMAGE_PADDING)


def patch_pixel_indices(nside: int, theta_c: float, phi_c: float, patch_size_deg: float,
                        xsize: int) -> np.ndarray:
    """RING pixel indices of the gnomonic image centred on ``(theta_c, phi_c)`` [rad].

    Same geometry as ``hp.gnomview(map, rot=(lon, lat), xsize=M, reso=S*60/xsize, nest=False,
    flip='astro')`` with ``M = gnomonic_image_size(xsize)``, psi = 0 and nearest-pixel sampling:
    image row i runs south to north (``y``), column j east to west (astro convention: east on the
    left when shown with origin='lower').  The centre is converted to (lon, lat) [deg] as the original
    did, ``hp.vec2dir(hp.ang2vec(theta_c, phi_c), lonlat=True)``.

    Returns int64 array of shape (M, M).
    """
    if isinstance(nside, bool) or not isinstance(nside, (int, np.integer)) or not hp.isnsideok(nside):
        raise ValueError(f"nside must be a positive integer (RING ordering), got {nside!r}")
    if not 0.0 <= theta_c <= np.pi:
        raise ValueError(f"theta_c must be a colatitude in [0, pi] rad, got {theta_c!r}")
    if not 0.0 < patch_size_deg < 180.0:
        raise ValueError(f"patch_size_deg must be in (0, 180) deg, got {patch_size_deg!r}")
    image_size = gnomonic_image_size(xsize)
    lon, lat = hp.vec2dir(hp.ang2vec(theta_c, phi_c), lonlat=True)
    projector = GnomonicProj(rot=(lon, lat), xsize=image_size, ysize=image_size,
                             reso=patch_size_deg * 60.0 / xsize, flipconv="astro")
    x, y = projector.ij2xy()
    vx, vy, vz = projector.xy2vec(x, y)
    return hp.vec2pix(nside, vx, vy, vz).astype(np.int64, copy=False)


def project_patch(ring_map: np.ndarray, pixel_indices: np.ndarray, xsize: int) -> np.ndarray:
    """Sample ``ring_map`` on a gnomonic image, rotate it by 45 deg and crop the central xsize square.

    ``ring_map``: full-sky RING-ordered map, shape (npix,).  ``pixel_indices``: output of
    ``patch_pixel_indices`` for the same ``xsize``, shape (M, M).  The rotation is the original's
    ``scipy.ndimage.rotate(image, 45, reshape=False)`` (cubic spline, mode 'constant', cval 0) of the
    float64 image; the crop is rows/cols ``M//2 - xsize//2`` onwards, which never reaches the
    zero-filled corners.  Only the crop is evaluated (:func:`_rotated_crop_coordinates`), with the
    same bits.  Orientation of the result (row index first): north points along
    (+row, +col)/sqrt2 and east along (+row, -col)/sqrt2, so the patch edges are parallel to those of
    the footprint diamond.  Returns float32 array of shape (xsize, xsize).
    """
    ring_map = np.asarray(ring_map)
    if ring_map.ndim != 1 or not hp.isnpixok(ring_map.size):
        raise ValueError(f"ring_map must be a full-sky HEALPix map of shape (12*nside**2,), got {ring_map.shape}")
    image_size = gnomonic_image_size(xsize)
    pixel_indices = np.asarray(pixel_indices)
    if pixel_indices.shape != (image_size, image_size):
        raise ValueError(f"pixel_indices must have shape {(image_size, image_size)} for xsize={xsize}, "
                         f"got {pixel_indices.shape}")
    rows, columns, interior = _rotated_crop_points(xsize)
    if interior:  # cubic_spline: scipy's bits, twice as fast
        # Imported here, not with this module: numba adds ~140 MB to a process, which the stages that
        # never project a patch (preprocess, kappa) should not carry.
        from lensing_ssc.science.cubic_spline import CubicSpline2D
        try:
            spline = CubicSpline2D.of_samples(ring_map, pixel_indices, _workspace(image_size))
        except ValueError:
            raise ValueError(f"pixel_indices must index a map of {ring_map.size} pixels (wrong nside?)") from None
        return spline(rows, columns, checked=True, dtype=np.float32)
    if pixel_indices.min() < 0 or pixel_indices.max() >= ring_map.size:
        raise ValueError(f"pixel_indices must index a map of {ring_map.size} pixels (wrong nside?)")
    image = ring_map[pixel_indices].astype(np.float64)
    filtered = ndimage.spline_filter(image, order=3, mode="constant")
    cropped = ndimage.map_coordinates(filtered, np.stack([rows, columns]), order=3, mode="constant",
                                      cval=0.0, prefilter=False)
    return cropped.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _workspace(image_size: int):
    """Two float64 (M, M) arrays that :func:`project_patch` reuses for the spline of every patch of a
    run (one image size at a time): fresh ones cost ~40 MB of page faults per patch at xsize 1024,
    as much time as the interpolation. Projections in one process run one after the other."""
    return np.empty((image_size, image_size)), np.empty((image_size, image_size))


@functools.lru_cache(maxsize=4)
def _rotated_crop_points(xsize: int):
    """(rows, columns, interior): :func:`_rotated_crop_coordinates` as two contiguous (xsize, xsize)
    arrays, and whether every point's cubic-spline support lies inside the image (from xsize ~20 on;
    the smallest patches reach scipy's boundary handling and are projected by scipy itself)."""
    from lensing_ssc.science.cubic_spline import inside  # numba: see project_patch

    coordinates = _rotated_crop_coordinates(xsize)
    rows, columns = np.ascontiguousarray(coordinates[0]), np.ascontiguousarray(coordinates[1])
    size = gnomonic_image_size(xsize)
    for array in (rows, columns):
        array.flags.writeable = False
    return rows, columns, inside((size, size), rows, columns)


def _rotated_crop_coordinates(xsize: int) -> np.ndarray:
    """Input coordinates (2, xsize, xsize) [image pixels] of the central crop of the 45-deg rotation.

    ``ndimage.rotate(image, 45, reshape=False)`` is ``affine_transform`` with ``rot_matrix`` and
    ``offset``, which evaluates every point of the M x M output, and the crop then keeps xsize^2 of
    them. Here only the crop's points are evaluated (``map_coordinates`` on the same spline-filtered
    image), their coordinates computed with the same float64 operations in the same order as scipy's
    C loop (``t = offset[h]; t += i * M[h, 0]; t += j * M[h, 1]``): the patch has the same bits
    (tests/science/test_patches.py compares with ``ndimage.rotate``) in 0.57x the time at xsize 1024.
    """
    image_size = gnomonic_image_size(xsize)
    cosine, sine = special.cosdg(_ROTATION_DEG), special.sindg(_ROTATION_DEG)
    matrix = np.array([[cosine, sine], [-sine, cosine]])  # as scipy.ndimage.rotate builds it
    half = (np.array([image_size, image_size]) - 1) / 2
    offset = half - matrix @ half
    start = image_size // 2 - xsize // 2
    rows = np.arange(start, start + xsize, dtype=np.float64)[:, None]
    cols = np.arange(start, start + xsize, dtype=np.float64)[None, :]
    coordinates = np.empty((2, xsize, xsize))
    for axis in range(2):
        coordinates[axis] = (offset[axis] + rows * matrix[axis, 0]) + cols * matrix[axis, 1]
    return coordinates


def gnomonic_patch(ring_map: np.ndarray, theta_c: float, phi_c: float, patch_size_deg: float,
                   xsize: int) -> np.ndarray:
    """Patch of side ``patch_size_deg`` [deg] and ``xsize`` pixels centred on ``(theta_c, phi_c)`` [rad].

    ``ring_map``: RING-ordered full-sky map, shape (npix,).  Pixel size ``patch_size_deg*60/xsize``
    arcmin.  Composition of ``patch_pixel_indices`` and ``project_patch``.  Returns float32 (xsize, xsize).
    """
    ring_map = np.asarray(ring_map)
    if ring_map.ndim != 1 or not hp.isnpixok(ring_map.size):
        raise ValueError(f"ring_map must be a full-sky HEALPix map of shape (12*nside**2,), got {ring_map.shape}")
    indices = patch_pixel_indices(hp.npix2nside(ring_map.size), theta_c, phi_c, patch_size_deg, xsize)
    return project_patch(ring_map, indices, xsize)


def replication_flags(theta: np.ndarray, phi: np.ndarray, patch_size_deg: float, box_size: float,
                      chi_max: float) -> np.ndarray:
    """Flag patches whose line of sight runs along a coordinate axis of a replicated box (Decision 8).

    In a periodically replicated box of side ``box_size`` a ray along a coordinate axis crosses the
    same column of matter once per ``box_size``; it lies on two replication planes (e.g. the +x axis
    on y=0 and z=0, SCIENCE.md §11.5: patch 132 of the 10-deg set, centred on (90 deg, 0)).  Rays
    near one plane only, or near an offset plane x = m*box_size (m != 0, reached only far from the
    observer), do not repeat their matter and are not flagged.

    Rule: with ``n`` the unit vector of the patch centre and ``r = radians(S)/sqrt(2)`` the half
    diagonal of the patch (the radius of the disc that approximates its footprint), the centre is
    near the plane ``x_i = 0`` when its angular distance to it, ``arcsin(|n_i|)``, is below ``r``.
    A patch is flagged when it is near at least two of the three planes (its footprint reaches
    within ~r of an axis) AND ``chi_max > box_size``, i.e. the light cone out to the source is long
    enough for the axis ray to pass through a second replica of the column.  This is a flag, not a
    correction; it is conservative (it also flags a bigbox of 3750 Mpc/h at zs = 2.5, chi ~ 4046 Mpc/h).

    ``theta``, ``phi``: centres [rad], same shape; ``box_size`` and ``chi_max`` in the same length
    unit (Mpc/h).  Returns a bool array of the shape of ``theta``.
    """
    theta = np.asarray(theta, dtype=float)
    phi = np.asarray(phi, dtype=float)
    if theta.shape != phi.shape:
        raise ValueError(f"theta and phi must have the same shape, got {theta.shape} and {phi.shape}")
    if not 0.0 < patch_size_deg < 180.0:
        raise ValueError(f"patch_size_deg must be in (0, 180) deg, got {patch_size_deg!r}")
    if not box_size > 0:
        raise ValueError(f"box_size must be a positive length [Mpc/h], got {box_size!r}")
    if not chi_max > 0:
        raise ValueError(f"chi_max must be a positive comoving distance [Mpc/h], got {chi_max!r}")
    if chi_max <= box_size:
        return np.zeros(theta.shape, dtype=bool)
    half_diagonal = np.radians(patch_size_deg) / np.sqrt(2.0)
    direction = hp.ang2vec(theta.ravel(), phi.ravel())
    distance_to_planes = np.arcsin(np.clip(np.abs(direction), 0.0, 1.0))
    near_planes = np.count_nonzero(distance_to_planes < half_diagonal, axis=1)
    return (near_planes >= 2).reshape(theta.shape)
