"""Tests of lensing_ssc.science.patches: §4.3 extraction (against hp.gnomview and analytic maps),
Decision 8 / §11.5 replication flags."""
import warnings

import healpy as hp
import matplotlib
import numpy as np
import pytest
from scipy import ndimage

from lensing_ssc.science.fibonacci import patch_centers
from lensing_ssc.science.patches import (
    gnomonic_image_size,
    gnomonic_patch,
    patch_pixel_indices,
    project_patch,
    replication_flags,
)

SIZE = 10.0  # patch side [deg]
CENTRES = [(np.pi / 2, 0.0), (1.0, 4.5), (2.3, 5.9), (0.4, 2.0)]  # (theta, phi) [rad]; phi > pi included


@pytest.fixture(scope="module")
def random_map64():
    return np.random.default_rng(7).normal(size=hp.nside2npix(64)).astype(np.float32)


@pytest.fixture(scope="module")
def pixel_vectors256():
    """Unit vectors of the RING pixel centres at nside 256, shape (3, npix)."""
    return np.array(hp.pix2vec(256, np.arange(hp.nside2npix(256))))


def gnomview_image(ring_map, theta, phi, xsize):
    """The original's call (§4.3): the un-rotated gnomonic image of side int(xsize*(0.1+sqrt2))."""
    matplotlib.use("Agg")
    lon, lat = hp.vec2dir(hp.ang2vec(theta, phi), lonlat=True)
    with warnings.catch_warnings():  # healpy's colour-map set-up warns about matplotlib deprecations
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        image = hp.gnomview(ring_map, rot=(lon, lat), xsize=gnomonic_image_size(xsize),
                            reso=SIZE * 60 / xsize, nest=False, return_projected_map=True, no_plot=True)
    assert not np.ma.getmaskarray(image).any()
    return np.ma.getdata(image)


def local_frame(theta, phi):
    """Unit vectors (radial, north, east) at (theta, phi)."""
    radial = hp.ang2vec(theta, phi)
    north = -np.array([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), -np.sin(theta)])
    east = np.array([-np.sin(phi), np.cos(phi), 0.0])
    return radial, north, east


def test_image_size_of_the_original():
    assert gnomonic_image_size(2048) == 3101
    assert gnomonic_image_size(1024) == int(1024 * (0.1 + np.sqrt(2)))
    for bad in [15, 0, 64.0, True]:
        with pytest.raises(ValueError, match="xsize"):
            gnomonic_image_size(bad)


@pytest.mark.parametrize("theta, phi", CENTRES)
def test_indices_and_patch_equal_gnomview(random_map64, theta, phi):
    """(c) nside 64, xsize 64: same image as hp.gnomview, same patch as gnomview + rotate + crop."""
    xsize = 64
    reference = gnomview_image(random_map64, theta, phi, xsize)
    indices = patch_pixel_indices(64, theta, phi, SIZE, xsize)
    assert indices.dtype == np.int64 and indices.shape == reference.shape == (96, 96)
    np.testing.assert_array_equal(random_map64[indices], reference)

    rotated = ndimage.rotate(reference, 45, reshape=False)
    start = 96 // 2 - xsize // 2  # the original crop [c - xsize/2 : c + xsize/2], c = M // 2
    expected = rotated[start:start + xsize, start:start + xsize].astype(np.float32)
    patch = gnomonic_patch(random_map64, theta, phi, SIZE, xsize)
    assert patch.dtype == np.float32 and patch.shape == (xsize, xsize)
    np.testing.assert_array_equal(patch, expected)
    np.testing.assert_array_equal(project_patch(random_map64, indices, xsize), patch)


@pytest.mark.parametrize("xsize", [16, 17, 64, 101])
def test_constant_map_gives_constant_patch(xsize):
    """(d) the 45-deg rotated crop never touches the zero fill outside the gnomonic image."""
    ring_map = np.full(hp.nside2npix(32), 2.5, dtype=np.float32)
    theta, phi = patch_centers(SIZE)
    for i in [0, 132, 200, 264]:
        patch = gnomonic_patch(ring_map, theta[i], phi[i], SIZE, xsize)
        assert np.count_nonzero(patch == 0) == 0
        np.testing.assert_allclose(patch, 2.5, rtol=1e-6)


def expected_linear_patch(direction, theta, phi, xsize):
    """``direction . p`` at the sky position p of every patch pixel, computed independently:
    north along (+row, +col)/sqrt2, east along (+row, -col)/sqrt2 (§4.3 orientation, rotation about
    the image centre (M-1)/2), pixel side S/xsize, inverse gnomonic p ~ n + u east + v north."""
    image_size = gnomonic_image_size(xsize)
    offset = np.arange(xsize) + image_size // 2 - xsize // 2 - (image_size - 1) / 2
    rows, cols = np.meshgrid(offset, offset, indexing="ij")
    step = np.radians(SIZE / xsize)
    north_offset = (rows + cols) / np.sqrt(2) * step
    east_offset = (rows - cols) / np.sqrt(2) * step
    radial, north, east = local_frame(theta, phi)
    sky = radial[:, None, None] + east_offset * east[:, None, None] + north_offset * north[:, None, None]
    sky /= np.linalg.norm(sky, axis=0)
    return np.tensordot(direction, sky, axes=1)


@pytest.mark.parametrize("theta, phi", CENTRES)
def test_z_map_is_smooth_and_centred(pixel_vectors256, theta, phi):
    """(e) the map z = cos(theta): the patch follows cos(theta) of each pixel's sky position to within
    the nearest-pixel error (|grad z| <= 1 times the largest pixel radius); the centre pixel, half a
    pixel diagonal from the centre, equals cos(theta_c) within the pixel sizes."""
    nside, xsize = 256, 64
    z_map = pixel_vectors256[2].astype(np.float32)
    patch = gnomonic_patch(z_map, theta, phi, SIZE, xsize)
    expected = expected_linear_patch(np.array([0.0, 0.0, 1.0]), theta, phi, xsize)
    assert np.abs(patch - expected).max() < hp.max_pixrad(nside)
    centre_tolerance = np.sin(theta) * (np.radians(SIZE / xsize) + hp.max_pixrad(nside))
    assert abs(patch[xsize // 2, xsize // 2] - np.cos(theta)) < centre_tolerance
    # the variation across the patch is real (not a constant): z spans ~ sin(theta) * S
    assert np.ptp(patch) > 0.9 * np.sin(theta) * np.radians(SIZE)


@pytest.mark.parametrize("theta, phi", CENTRES)
def test_east_west_orientation(pixel_vectors256, theta, phi):
    """(f) a map increasing towards the east of the centre: east is where the analytic orientation
    puts it (a west/east flip would give errors of tens of pixel radii)."""
    nside, xsize = 256, 64
    east = local_frame(theta, phi)[2]
    patch = gnomonic_patch((east @ pixel_vectors256).astype(np.float32), theta, phi, SIZE, xsize)
    assert np.abs(patch - expected_linear_patch(east, theta, phi, xsize)).max() < hp.max_pixrad(nside)


@pytest.mark.parametrize("theta, phi", [(np.pi / 2, 0.0), (1.0, 4.5)])
def test_feature_east_of_centre_lands_where_gnomview_puts_it(theta, phi):
    """(f) a spot 3 deg east of the centre: gnomview (flip='astro') shows it left of the centre
    (smaller column, same row); our image is identical, and in the patch it sits 3 deg along the
    east direction (+row, -col)/sqrt2.  Tolerance: one HEALPix pixel (spot pixelisation)."""
    nside, xsize = 256, 64
    radial, north, east = local_frame(theta, phi)
    spot = np.cos(np.radians(3)) * radial + np.sin(np.radians(3)) * east
    ring_map = np.zeros(hp.nside2npix(nside), dtype=np.float32)
    ring_map[hp.query_disc(nside, spot, np.radians(1.0))] = 1.0
    image = ring_map[patch_pixel_indices(nside, theta, phi, SIZE, xsize)]
    np.testing.assert_array_equal(image, gnomview_image(ring_map, theta, phi, xsize))
    step = np.radians(SIZE / xsize)  # rad per image pixel
    tolerance = hp.nside2resol(nside) / step
    distance = np.tan(np.radians(3)) / step  # gnomonic distance of the spot [image pixels]
    rows, cols = np.nonzero(image)
    centre = (image.shape[0] - 1) / 2
    assert rows.mean() - centre == pytest.approx(0.0, abs=tolerance)
    assert cols.mean() - centre == pytest.approx(-distance, abs=tolerance)

    patch = gnomonic_patch(ring_map, theta, phi, SIZE, xsize)
    weights = np.clip(patch, 0, None)
    image_size = gnomonic_image_size(xsize)
    shift = image_size // 2 - xsize // 2 - (image_size - 1) / 2  # patch index -> offset from the centre
    rows, cols = np.indices(patch.shape) + shift
    assert (weights * rows).sum() / weights.sum() == pytest.approx(distance / np.sqrt(2), abs=tolerance)
    assert (weights * cols).sum() / weights.sum() == pytest.approx(-distance / np.sqrt(2), abs=tolerance)


def test_bad_inputs_raise_value_error(random_map64):
    indices = patch_pixel_indices(64, 1.0, 1.0, SIZE, 32)
    with pytest.raises(ValueError, match="pixel_indices"):
        project_patch(random_map64, indices, 64)
    with pytest.raises(ValueError, match="pixel_indices"):
        project_patch(random_map64[: hp.nside2npix(16)], indices, 32)
    with pytest.raises(ValueError, match="ring_map"):
        gnomonic_patch(random_map64[:-1], 1.0, 1.0, SIZE, 32)
    with pytest.raises(ValueError, match="nside"):
        patch_pixel_indices(0, 1.0, 1.0, SIZE, 32)
    with pytest.raises(ValueError, match="theta_c"):
        patch_pixel_indices(64, 4.0, 1.0, SIZE, 32)


def test_replication_flags_of_the_10_deg_set():
    """Decision 8 / §11.5: tiled box (625 Mpc/h) to zs = 2 (chi ~ 3598 Mpc/h): patch 132, whose line
    of sight is the +x axis, is flagged; the flagged set is a handful of near-axis patches."""
    theta, phi = patch_centers(SIZE)
    flags = replication_flags(theta, phi, SIZE, box_size=625.0, chi_max=3598.0)
    assert flags.shape == (265,) and flags.dtype == bool
    assert flags[132]
    assert 1 <= flags.sum() < 10
    # every flagged centre lies within S/sqrt2 of a coordinate axis direction in two components
    vectors = hp.ang2vec(theta[flags], phi[flags])
    assert np.all(np.sort(np.abs(vectors), axis=1)[:, 1] < np.sin(np.radians(SIZE) / np.sqrt(2)))
    # nothing is flagged when the light cone does not reach a second replica (a bigbox)
    assert not replication_flags(theta, phi, SIZE, box_size=5000.0, chi_max=3598.0).any()


def test_replication_flags_geometry():
    """Centres on an axis are flagged, on one plane only or far from the planes are not; the
    threshold is the half diagonal S/sqrt2 = 7.07 deg for S = 10."""
    lat = np.radians([0.0, 7.0, 7.2, 0.0, 45.0, 30.0])
    lon = np.radians([0.0, 0.0, 0.0, 45.0, 0.0, 60.0])
    theta, phi = np.pi / 2 - lat, np.mod(lon, 2 * np.pi)
    flags = replication_flags(theta, phi, SIZE, box_size=625.0, chi_max=2000.0)
    np.testing.assert_array_equal(flags, [True, True, False, False, False, False])
    # -y axis, and 2-d input keeps its shape
    grid = replication_flags(np.full((2, 2), np.pi / 2), np.radians([[270.0, 100.0], [180.0, 3.0]]),
                             SIZE, 625.0, 2000.0)
    np.testing.assert_array_equal(grid, [[True, False], [True, True]])
    with pytest.raises(ValueError, match="box_size"):
        replication_flags(theta, phi, SIZE, 0.0, 2000.0)
    with pytest.raises(ValueError, match="chi_max"):
        replication_flags(theta, phi, SIZE, 625.0, -1.0)
    with pytest.raises(ValueError, match="theta and phi"):
        replication_flags(theta, phi[:2], SIZE, 625.0, 2000.0)


@pytest.mark.parametrize("xsize", [16, 17, 101, 256, 1024, 2048])
def test_crop_only_rotation_has_the_bits_of_rotating_the_whole_image(xsize):
    """project_patch evaluates only the crop of the 45-deg rotation: same bits as the original route."""
    image_size = gnomonic_image_size(xsize)
    ring_map = np.random.default_rng(xsize).standard_normal(12 * 16**2)
    indices = np.random.default_rng(0).integers(0, ring_map.size, (image_size, image_size))
    rotated = ndimage.rotate(ring_map[indices], 45, reshape=False)
    start = image_size // 2 - xsize // 2
    expected = rotated[start:start + xsize, start:start + xsize].astype(np.float32)
    assert project_patch(ring_map, indices, xsize).tobytes() == expected.tobytes()
