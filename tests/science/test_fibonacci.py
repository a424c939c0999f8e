"""Tests of lensing_ssc.science.fibonacci: §4.1 lattice and counts, §4.2 footprints and optimiser, §11.1."""
import healpy as hp
import numpy as np
import pytest

from lensing_ssc.science.fibonacci import (
    GOLDEN_RATIO,
    fibonacci_grid,
    fibonacci_point_count,
    footprints_disjoint,
    patch_centers,
    patch_footprint_vertices,
    valid_centers,
)

# SCIENCE.md §4.1: patch side S [deg] -> (points in the original centre file, valid after the pole cut)
ORIGINAL_TABLE = {5: (1083, 1075), 10: (273, 265), 15: (121, 113), 20: (67, 59), 25: (43, 35), 30: (31, 23)}


def local_frame(theta, phi):
    """Unit vectors (radial, e_theta = south, e_phi = east) at (theta, phi)."""
    radial = hp.ang2vec(theta, phi)
    e_theta = np.array([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), -np.sin(theta)])
    e_phi = np.array([-np.sin(phi), np.cos(phi), 0.0])
    return radial, e_theta, e_phi


def test_grid_is_equal_area_in_z_with_golden_angle_steps():
    n = 273
    theta, phi = fibonacci_grid(n)
    assert theta.shape == phi.shape == (n,)
    k = np.arange(-(n // 2), n // 2 + 1)
    # z = cos(theta) = -2k/n: equally spaced rings (equal-area bands), theta ascending
    np.testing.assert_allclose(np.cos(theta), -2.0 * k / n, atol=1e-13)
    assert np.all(np.diff(theta) > 0)
    assert np.all((phi >= 0) & (phi < 2 * np.pi))
    steps = np.mod(np.diff(phi), 2 * np.pi)
    np.testing.assert_allclose(steps, np.mod(2 * np.pi / GOLDEN_RATIO, 2 * np.pi), atol=1e-9)
    # k = 0 is the point (pi/2, 0)
    assert theta[n // 2] == np.pi / 2 and phi[n // 2] == 0.0


@pytest.mark.parametrize("bad", [1, 2, 274, 0, -3, 5.0, True, "7"])
def test_grid_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="n_points"):
        fibonacci_grid(bad)


@pytest.mark.parametrize("size", sorted(ORIGINAL_TABLE))
def test_pole_cut_gives_the_original_valid_counts(size):
    n_points, n_valid = ORIGINAL_TABLE[size]
    theta, phi = fibonacci_grid(n_points)
    mask = valid_centers(theta, phi, size)
    assert mask.sum() == n_valid
    cut = np.radians(size) * np.sqrt(2)
    assert np.all((theta[mask] > cut) & (theta[mask] < np.pi - cut))
    assert np.all((theta[~mask] <= cut) | (theta[~mask] >= np.pi - cut))
    # the cut removes equally many points at each pole (the lattice is symmetric in z)
    assert (theta[~mask] < np.pi / 2).sum() == (theta[~mask] > np.pi / 2).sum()


def test_patch_centers_of_10_deg_and_patch_132():
    theta, phi = patch_centers(10)
    assert theta.shape == phi.shape == (265,)
    # §11.1: valid patch 132 is (theta, phi) = (90 deg, 0 deg), i.e. (lon 0, lat 0)
    assert np.degrees(theta[132]) == pytest.approx(90.0, abs=1e-12)
    assert np.degrees(phi[132]) == pytest.approx(0.0, abs=1e-12)
    full_theta, full_phi = fibonacci_grid(273)
    np.testing.assert_array_equal(theta, full_theta[4:-4])  # 4 points cut at each pole, order kept
    np.testing.assert_array_equal(phi, full_phi[4:-4])
    assert patch_centers(10.0)[0].shape == (265,)
    assert patch_centers(5)[0].shape == (1075,)  # the original 1083-point lattice


@pytest.mark.parametrize("theta_c, phi_c", [(np.pi / 2, 0.0), (0.3, 4.0), (2.0, 1.0), (1.2, 5.9), (2.8, np.pi)])
def test_footprint_is_the_rotated_diamond(theta_c, phi_c):
    """Vertices at angular distance h = S/sqrt2 from the centre, east, south, west and north of it."""
    size = 10.0
    h = np.radians(size) / np.sqrt(2)
    vertices = patch_footprint_vertices(theta_c, phi_c, size)
    assert vertices.shape == (4, 3)
    radial, south, east = local_frame(theta_c, phi_c)
    expected = np.array([radial * np.cos(h) + sign * np.sin(h) * axis
                         for sign, axis in [(1, east), (1, south), (-1, east), (-1, south)]])
    np.testing.assert_allclose(vertices, expected, atol=1e-14)
    # hence the rotation takes the base point (pi/2, 0) to the centre: the vertices' mean direction
    mean = vertices.sum(axis=0)
    np.testing.assert_allclose(mean / np.linalg.norm(mean), radial, atol=1e-14)


def test_footprints_disjoint_detects_overlap():
    size, nside = 10.0, 256
    step = np.radians(size)  # centres S apart along the equator: the diamonds (half-diagonal S/sqrt2) overlap
    assert not footprints_disjoint(np.array([np.pi / 2] * 2), np.array([0.0, step]), size, nside)
    assert footprints_disjoint(np.array([np.pi / 2] * 2), np.array([0.0, 2 * step]), size, nside)


@pytest.mark.parametrize("size", [10, 15, 20, 25, 30])
def test_optimiser_reproduces_the_original_counts(size):
    """§4.1/4.2: full search at the original nside 1024 (coarser nside gives other counts)."""
    assert fibonacci_point_count(size) == ORIGINAL_TABLE[size][0]


def test_optimiser_rejects_bad_arguments():
    with pytest.raises(ValueError, match="patch_size_deg"):
        fibonacci_point_count(0)
    with pytest.raises(ValueError, match="patch_size_deg"):
        fibonacci_point_count(70)
    with pytest.raises(ValueError, match="nside"):
        fibonacci_point_count(10, nside=1000)


def test_10_deg_footprints_do_not_overlap_brute_force():
    """Independent check at nside 256: a pixel centre p is inside the diamond of centre n iff its
    gnomonic coordinates (u east, v south) = (p.e_phi, p.e_theta) / p.n satisfy |u| + |v| < tan(h)
    (great-circle edges are straight lines in the gnomonic plane, vertices at tan(h) on the axes)."""
    size, nside = 10.0, 256
    h = np.radians(size) / np.sqrt(2)
    theta, phi = patch_centers(size)
    counts = np.zeros(hp.nside2npix(nside), dtype=int)
    for i, (theta_c, phi_c) in enumerate(zip(theta, phi)):
        radial, south, east = local_frame(theta_c, phi_c)
        candidates = hp.query_disc(nside, radial, h, inclusive=True, nest=True)
        p = np.array(hp.pix2vec(nside, candidates, nest=True)).T
        depth = p @ radial
        inside = candidates[np.abs(p @ east / depth) + np.abs(p @ south / depth) < np.tan(h)]
        counts[inside] += 1
        if i % 40 == 0:  # the same footprint as query_polygon's (boundary ties aside)
            polygon = hp.query_polygon(nside, patch_footprint_vertices(theta_c, phi_c, size), nest=True)
            assert len(np.setxor1d(polygon, inside)) <= 2
    assert counts.max() == 1
    # not vacuous: the covered area is 265 diamonds (spherical area slightly above S^2 each)
    covered = counts.sum() * hp.nside2pixarea(nside, degrees=True)
    assert 265 * size**2 < covered < 1.03 * 265 * size**2
