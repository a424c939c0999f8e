"""Tests of the production binning (SCIENCE.md §6.1) and of the half-open multipole bin rule."""
import numpy as np
import pytest

from lensing_ssc.science.statistics.binning import (ell_centers, ell_edges, multipole_bin_index,
                                                     nu_edges, validate_edges)


def test_default_ell_edges_match_science_md():
    expected = [300, 400.0564, 533.4838, 711.4121, 948.6833, 1265.0895, 1687.0240, 2249.6826, 3000]
    edges = ell_edges()
    assert edges.shape == (9,)
    np.testing.assert_allclose(edges, expected, rtol=0, atol=6e-5)
    # log-spaced: constant ratio between consecutive edges
    np.testing.assert_allclose(edges[1:] / edges[:-1], 10 ** (1 / 8), rtol=1e-13)


def test_default_ell_centers_match_science_md():
    expected = [350.028, 466.770, 622.448, 830.048, 1106.886, 1476.057, 1968.353, 2624.841]
    np.testing.assert_allclose(ell_centers(ell_edges()), expected, rtol=0, atol=6e-4)


def test_nu_edges_and_centers():
    np.testing.assert_array_equal(nu_edges(), np.arange(-4.0, 4.5, 1.0))
    np.testing.assert_array_equal(ell_centers(nu_edges()), np.arange(-3.5, 4.0, 1.0))


def test_multipole_bin_index_is_half_open_like_a_literal_loop():
    edges = np.array([1.0, 2.0, 3.5, 7.0])
    ell = np.array([0.0, 0.5, 1.0, np.nextafter(1.0, 2.0), 1.5, 2.0, 2.5, 3.5, 5.0, 7.0,
                    np.nextafter(7.0, 8.0), 9.0])
    expected = []
    for value in ell:  # literal (l_k, l_{k+1}] rule
        hit = [k for k in range(edges.size - 1) if edges[k] < value <= edges[k + 1]]
        expected.append(hit[0] if hit else -1)
    np.testing.assert_array_equal(multipole_bin_index(ell, edges), expected)
    assert multipole_bin_index(np.full((2, 3), 2.0), edges).shape == (2, 3)


@pytest.mark.parametrize("kwargs", [dict(lmin=0), dict(lmin=3000, lmax=300), dict(nbin=0),
                                    dict(nbin=2.5), dict(lmax=np.inf)])
def test_ell_edges_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        ell_edges(**kwargs)


@pytest.mark.parametrize("edges", [[1.0], [[1.0, 2.0]], [1.0, 1.0, 2.0], [3.0, 2.0], [1.0, np.nan]])
def test_validate_edges_rejects_bad_edges(edges):
    with pytest.raises(ValueError, match="edges"):
        validate_edges(edges, "edges")


def test_negative_multipole_edges_rejected():
    with pytest.raises(ValueError, match="l_edges"):
        multipole_bin_index([1.0], [-1.0, 2.0])


def test_nu_edges_rejects_bad_range():
    with pytest.raises(ValueError):
        nu_edges(1.0, -1.0)
