"""Merging ID-sorted runs block by block gives the map of one bincount over all rows."""
import numpy as np
import pytest

from lensing_ssc.science.sorted_runs import merged_mass_blocks


def sorted_run(rng, npix, rows, pieces):
    """One run: sorted pixels (one row per pixel, as in a FastPM event) with weights, cut into pieces."""
    ipix = np.sort(rng.choice(npix, size=rows, replace=False))
    weights = rng.gamma(0.5, 100.0, rows)
    cuts = np.sort(rng.integers(0, rows, pieces - 1))
    return ipix, weights, list(zip(np.split(ipix, cuts), np.split(weights, cuts)))


@pytest.mark.parametrize("npix, block, nruns", [(12 * 64**2, 1000, 2), (12 * 64**2, 2**16, 1), (48, 7, 3),
                                                (12 * 16**2, 12 * 16**2, 2)])
def test_blocks_equal_one_bincount_of_all_rows(npix, block, nruns):
    rng = np.random.default_rng(npix + block + nruns)
    runs = [sorted_run(rng, npix, rows=npix // (k + 2), pieces=5) for k in range(nruns)]
    blocks = list(merged_mass_blocks([pieces for _, _, pieces in runs], npix, block))
    assert [b.size for b in blocks[:-1]] == [block] * (len(blocks) - 1) and 0 < blocks[-1].size <= block
    expected = np.bincount(np.concatenate([ipix for ipix, _, _ in runs]),
                           weights=np.concatenate([w for _, w, _ in runs]), minlength=npix)
    np.testing.assert_array_equal(np.concatenate(blocks), expected)  # same bits: each pixel sums its rows in order


def test_a_run_with_repeated_pixels_and_empty_pieces_sums_them():
    ipix = np.array([0, 0, 3, 3, 3, 9, 11])
    weights = np.arange(1.0, 8.0)
    pieces = [(ipix[:1], weights[:1]), (ipix[:0], weights[:0]), (ipix[1:4], weights[1:4]), (ipix[4:], weights[4:])]
    blocks = list(merged_mass_blocks([pieces, []], 12, 4))
    np.testing.assert_array_equal(np.concatenate(blocks), np.bincount(ipix, weights=weights, minlength=12))


def test_unsorted_or_out_of_range_pixels_are_refused():
    with pytest.raises(ValueError, match="decrease between pieces"):
        list(merged_mass_blocks([[(np.array([5, 6]), np.ones(2)), (np.array([4]), np.ones(1))]], 12, 4))
    with pytest.raises(ValueError, match="not sorted"):
        list(merged_mass_blocks([[(np.array([5, 1]), np.ones(2))]], 12, 4))
    with pytest.raises(ValueError, match="beyond the map's 12 pixels"):
        list(merged_mass_blocks([[(np.array([5, 12]), np.ones(2))]], 12, 4))
