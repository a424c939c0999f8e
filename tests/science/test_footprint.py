"""Tests of lensing_ssc.science.footprint against geometry computed independently from pixel boundaries."""
import threading

import healpy as hp
import numpy as np
import pytest

from lensing_ssc.science import footprint
from lensing_ssc.science.footprint import (observed_footprint, observed_footprint_bits, patches_inside_footprint,
                                           polygon_inside_footprint)

NSIDE = 64
AXIS = hp.ang2vec(np.radians(60.0), np.radians(30.0))


def cap_pixels(nside, axis, radius_deg):
    """(touched, wholly inside): NESTED pixels of a spherical cap (radius >> pixel), from 32 points on
    each pixel boundary (healpy's inclusive query_disc is only a superset: it adds non-touching pixels)."""
    candidates = hp.query_disc(nside, axis, np.radians(radius_deg), inclusive=True, fact=8, nest=True)
    corners = hp.boundaries(nside, candidates, step=8, nest=True)  # (n, 3, 32)
    within = np.einsum("i,nij->nj", axis, corners) >= np.cos(np.radians(radius_deg))
    return candidates[within.any(axis=1)], candidates[within.all(axis=1)]


def as_mask(pixels, nside=NSIDE):
    mask = np.zeros(hp.nside2npix(nside), dtype=bool)
    mask[pixels] = True
    return mask


@pytest.mark.parametrize("radius_deg", [4.0, 10.0, 25.0])
def test_cone_footprint_is_the_pixels_wholly_inside_the_cone(radius_deg):
    """Reached = every pixel a cone of particles touches (as a light cone fills them); observed must be
    exactly the pixels whose whole area is inside the cone."""
    touched, inside = cap_pixels(NSIDE, AXIS, radius_deg)
    observed, holes = observed_footprint(as_mask(touched))
    assert holes == 0
    np.testing.assert_array_equal(np.flatnonzero(observed), np.sort(inside))


def test_full_sky_and_its_complement_sized_paths_agree():
    """The same footprint is found when the reached set is the small or the large one (two code paths)."""
    touched, inside = cap_pixels(NSIDE, AXIS, 100.0)  # more than half the sky
    assert touched.size > hp.nside2npix(NSIDE) / 2
    observed, _ = observed_footprint(as_mask(touched))
    np.testing.assert_array_equal(np.flatnonzero(observed), np.sort(inside))
    full, holes = observed_footprint(np.ones(hp.nside2npix(8), dtype=bool))
    assert full.all() and holes == 0


def test_isolated_holes_are_filled_larger_gaps_are_not():
    reached = np.ones(hp.nside2npix(NSIDE), dtype=bool)
    reached[[100, 20000]] = False  # two isolated empty pixels: sparse sampling inside the light cone
    gap = np.append(hp.get_all_neighbours(NSIDE, 40000, nest=True), 40000)
    reached[gap] = False  # 9 adjacent empty pixels: a real gap, kept with its ring of cut pixels
    observed, holes = observed_footprint(reached)
    assert holes == 2
    ring = np.setdiff1d(hp.get_all_neighbours(NSIDE, gap, nest=True).ravel(), gap)
    assert not observed[gap].any() and not observed[ring].any()
    assert np.count_nonzero(~observed) == gap.size + ring.size
    # sparse sampling inside a cone: the filled hole is observed too
    touched, inside = cap_pixels(NSIDE, AXIS, 10.0)
    mask = as_mask(touched)
    mask[inside[0]] = False
    observed, holes = observed_footprint(mask)
    assert holes == 1 and observed[inside[0]]


@pytest.mark.parametrize("missing", [[5], [5, 6]])
def test_nside1_map_whose_last_byte_is_half_pixels(missing):
    """12 pixels: the packed bits' last byte holds 4 pixels and 4 padding bits that are no pixels."""
    reached = np.ones(12, dtype=bool)
    reached[missing] = False
    observed, holes = observed_footprint(reached)
    if len(missing) == 1:  # an isolated hole: filled, the whole sky observed
        assert holes == 1 and observed.all()
    else:  # two adjacent empty pixels are no hole; everything next to them is cut off
        neighbours = hp.get_all_neighbours(1, missing, nest=True).ravel()
        expected = reached.copy()
        expected[neighbours[neighbours >= 0]] = False
        assert holes == 0
        np.testing.assert_array_equal(observed, expected)


def test_nothing_reached_and_bad_input():
    observed, holes = observed_footprint(np.zeros(hp.nside2npix(4), dtype=bool))
    assert not observed.any() and holes == 0
    with pytest.raises(ValueError, match="reached"):
        observed_footprint(np.ones(100, dtype=bool))
    with pytest.raises(ValueError, match="reached"):
        observed_footprint(np.ones(hp.nside2npix(4)))
    with pytest.raises(ValueError, match="vertices"):
        polygon_inside_footprint(np.ones(hp.nside2npix(4), dtype=bool), np.eye(3)[:2])
    with pytest.raises(ValueError, match="margin_deg"):
        patches_inside_footprint(np.ones(hp.nside2npix(4), dtype=bool), [1.0], [0.0], 5.0, -1.0)


def test_patch_inside_a_cap_iff_its_vertices_are():
    """A spherical cap (radius < 90 deg) is convex, so a diamond patch lies in it iff its 4 vertices do,
    i.e. iff the centre offset plus the half-diagonal S/sqrt2 stays below the radius. Pixels are ~0.9 deg
    at nside 64 and the footprint keeps whole pixels only: test a pixel and a half away from the limit."""
    radius, side = 20.0, 10.0
    _, inside = cap_pixels(NSIDE, AXIS, radius)
    observed = as_mask(inside)
    half_diagonal = side / np.sqrt(2.0)
    theta_axis, phi_axis = hp.vec2ang(AXIS)
    clear = radius - half_diagonal - 1.5 * hp.nside2resol(NSIDE, arcmin=True) / 60.0
    beyond = radius - half_diagonal + 0.5
    offsets = np.array([0.0, clear, beyond])  # along the meridian, southwards
    theta = theta_axis[0] + np.radians(offsets)
    phi = np.full(3, phi_axis[0])
    np.testing.assert_array_equal(patches_inside_footprint(observed, theta, phi, side), [True, True, False])
    # a margin of 1 deg is a patch 2 deg larger
    np.testing.assert_array_equal(patches_inside_footprint(observed, theta, phi, side, margin_deg=1.0),
                                  patches_inside_footprint(observed, theta, phi, side + 2.0))
    assert not patches_inside_footprint(observed, theta[:1], phi[:1], side, margin_deg=radius)[0]


def shared_footprints(reached, count):
    """observed_footprint_bits run by ``count`` threads, each on its share of the blocks, their bit maps
    OR-ed together at every combine step (as the MPI ranks of the preprocess QC do with an allreduce)."""
    barrier, parts, results = threading.Barrier(count), [None] * count, [None] * count

    def worker(index):
        def combine(bits):
            parts[index] = bits.copy()
            barrier.wait()
            total = np.bitwise_or.reduce(np.stack(parts))
            barrier.wait()  # every worker has read the parts before they are overwritten
            return total
        results[index] = observed_footprint_bits(np.packbits(reached), reached.size, (index, count), combine)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("radius_deg", [10.0, 100.0])
@pytest.mark.parametrize("count", [2, 3])
def test_work_shared_between_workers_gives_the_serial_footprint(monkeypatch, radius_deg, count):
    monkeypatch.setattr(footprint, "_NEIGHBOUR_BLOCK", 64)  # 768 blocks of 8 x 8 pixels at nside 64
    touched, _ = cap_pixels(NSIDE, AXIS, radius_deg)
    reached = as_mask(touched)
    reached[np.random.default_rng(1).choice(reached.size, 40)] ^= True  # holes, and stray reached pixels
    serial_bits, serial_holes = observed_footprint_bits(np.packbits(reached), reached.size)
    for observed_bits, holes in shared_footprints(reached, count):
        assert holes == serial_holes
        np.testing.assert_array_equal(observed_bits, serial_bits)
    alone = [observed_footprint_bits(np.packbits(reached), reached.size, (index, count))[0] for index in range(count)]
    assert all(not np.array_equal(bits, serial_bits) for bits in alone)  # no share does all the work
