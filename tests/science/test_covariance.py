"""Ensemble covariance helpers against independent references: numpy's cov/corrcoef, explicit
resampling, brute-force loops, and analytic sampling errors of variance ratios."""
import random
import statistics

import numpy as np
import pytest

from lensing_ssc.science.covariance import (bootstrap_covariance_ratio, bootstrap_error, covariance_ratio,
                                            data_vector_paths, hartlap_factor, outlier_rows, pooled_summary,
                                            resampled_covariances)


def random_groups(rng, sizes, p=4):
    """Correlated rows: a shared random mixing matrix, different sizes per group."""
    mixing = rng.normal(size=(p, p))
    return [rng.normal(size=(n, p)) @ mixing + 3.0 for n in sizes]


def test_pooled_summary_equals_numpy_on_the_concatenated_rows():
    rng = np.random.default_rng(1)
    groups = random_groups(rng, [7, 12, 5])
    pooled = np.concatenate(groups)
    summary = pooled_summary(groups)
    np.testing.assert_allclose(summary["mean"], pooled.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(summary["cov"], np.cov(pooled, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(summary["std"], pooled.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(summary["corr"], np.corrcoef(pooled, rowvar=False), rtol=1e-12, atol=1e-15)


def test_pooled_summary_of_scalars_per_patch_and_mismatched_groups():
    rng = np.random.default_rng(2)
    groups = [rng.normal(size=9), rng.normal(size=4)]  # one value per patch, e.g. sigma0
    summary = pooled_summary(groups)
    assert summary["cov"].shape == (1, 1)
    assert summary["cov"][0, 0] == pytest.approx(statistics.variance(np.concatenate(groups).tolist()), rel=1e-12)
    with pytest.raises(ValueError, match="groups"):
        pooled_summary([np.ones((3, 2)), np.ones((3, 4))])


def test_hartlap_factor_value_and_domain():
    assert hartlap_factor(100, 10) == pytest.approx(88 / 99)
    assert hartlap_factor(2904, 8) == pytest.approx(2894 / 2903)
    for n, p in [(12, 10), (5, 8), (10, 0)]:
        with pytest.raises(ValueError, match="n_samples"):
            hartlap_factor(n, p)


def brute_force_outliers(rows, n_sigma):
    flagged = []
    for row in rows:
        hit = False
        for j, value in enumerate(row):
            column = [r[j] for r in rows]
            std = statistics.stdev(column)
            if std > 0 and abs(value - statistics.fmean(column)) >= n_sigma * std:
                hit = True
        flagged.append(hit)
    return np.array(flagged)


def test_outlier_rows_matches_a_brute_force_loop_and_ignores_constant_bins():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(200, 3))
    rows[17, 1] = 9.0   # a planted outlier
    rows[:, 2] = 0.25   # constant bin: never flags
    for n_sigma in (2.5, 4.0, 5.0):
        found = outlier_rows(rows, n_sigma)
        np.testing.assert_array_equal(found, brute_force_outliers(rows.tolist(), n_sigma))
    assert outlier_rows(rows, 5.0)[17] and outlier_rows(rows, 5.0).sum() == 1
    with pytest.raises(ValueError, match="n_sigma"):
        outlier_rows(rows, 0.0)


def test_covariance_ratio_is_elementwise_with_nan_for_zero_denominator():
    ratio = covariance_ratio([[2.0, 1.0], [1.0, 3.0]], [[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_array_equal(ratio, [[2.0, np.nan], [np.nan, 1.5]])
    with pytest.raises(ValueError, match="second"):
        covariance_ratio(np.ones(3), np.ones(4))


def test_resampled_covariances_equal_np_cov_of_explicitly_repeated_groups():
    rng = np.random.default_rng(4)
    groups = random_groups(rng, [6, 9, 4, 11])
    counts = np.array([[1, 1, 1, 1], [4, 0, 0, 0], [0, 2, 1, 1], [3, 0, 1, 0]])
    result = resampled_covariances(groups, counts)
    for b, row in enumerate(counts):
        repeated = np.concatenate([g for g, c in zip(groups, row) for _ in range(c)])
        np.testing.assert_allclose(result[b], np.cov(repeated, rowvar=False), rtol=1e-11, atol=1e-13)


def test_resampled_variance_is_exactly_zero_when_the_drawn_simulations_are_constant():
    # Like the PDF bin below nu = -3: zero in most simulations. A resample drawing only those has
    # exactly zero variance (raw second moments would leave round-off instead).
    rng = np.random.default_rng(5)
    groups = [np.column_stack([rng.normal(size=8), np.zeros(8)]) for _ in range(4)]
    groups.append(np.column_stack([rng.normal(size=8), rng.normal(scale=1e-7, size=8)]))
    counts = np.array([[2, 1, 1, 1, 0], [0, 0, 5, 0, 0], [1, 1, 1, 1, 1]])
    result = resampled_covariances(groups, counts)
    assert result[0, 1, 1] == 0.0 and result[1, 1, 1] == 0.0 and result[2, 1, 1] > 0
    assert np.all(result[:, 0, 0] > 0)


def test_bootstrap_of_identical_simulations_has_zero_error():
    # Every simulation holds the same rows: any resample of G simulations pools the same multiset.
    rng = np.random.default_rng(6)
    rows = rng.normal(size=(30, 3))
    first, second = [rows] * 8, [0.5 * rows] * 5
    replicates = bootstrap_covariance_ratio(first, second, 200, np.random.default_rng(0))
    expected = covariance_ratio(np.cov(np.tile(rows, (8, 1)), rowvar=False),
                                np.cov(np.tile(0.5 * rows, (5, 1)), rowvar=False))
    np.testing.assert_allclose(replicates, np.broadcast_to(expected, replicates.shape), rtol=1e-10)
    assert np.all(bootstrap_error(replicates) < 1e-10)


def f_ratio_std(d1, d2):
    """Standard deviation of an F(d1, d2) variable: the ratio of two Gaussian sample variances over
    its expectation."""
    return np.sqrt(2 * d2 ** 2 * (d1 + d2 - 2) / (d1 * (d2 - 2) ** 2 * (d2 - 4)))


def test_bootstrap_resamples_simulations_not_patches():
    # Patches within a simulation are identical (perfectly correlated), simulations independent:
    # the sampling std of the variance ratio is that of F(n_sims - 1, n_sims - 1), not of the
    # patch count. A patch-level bootstrap would give sqrt(3) times less.
    rng = np.random.default_rng(7)
    n_sims, patches = 200, 3
    first = [np.full((patches, 1), v) for v in rng.normal(size=n_sims)]
    second = [np.full((patches, 1), v) for v in rng.normal(size=n_sims)]
    error = bootstrap_error(bootstrap_covariance_ratio(first, second, 2000, np.random.default_rng(1)))[0, 0]
    ratio = np.var([g[0, 0] for g in first], ddof=1) / np.var([g[0, 0] for g in second], ddof=1)
    expected = ratio * f_ratio_std(n_sims - 1, n_sims - 1)
    assert error == pytest.approx(expected, rel=0.2)
    assert abs(error - expected / np.sqrt(patches)) > 0.3 * expected


def test_bootstrap_of_independent_patches_matches_the_analytic_error():
    # i.i.d. Gaussian rows: Var(s1^2/s2^2) ~ r^2 (2/(N1-1) + 2/(N2-1)) with N the pooled row counts.
    rng = np.random.default_rng(8)
    first = [rng.normal(scale=1.2, size=(50, 1)) for _ in range(20)]
    second = [rng.normal(size=(40, 1)) for _ in range(25)]
    replicates = bootstrap_covariance_ratio(first, second, 2000, np.random.default_rng(2))
    ratio = np.var(np.concatenate(first), ddof=1) / np.var(np.concatenate(second), ddof=1)
    expected = ratio * np.sqrt(2 / 999 + 2 / 999)
    assert bootstrap_error(replicates)[0, 0] == pytest.approx(expected, rel=0.2)


def test_bootstrap_is_reproducible_from_the_seed():
    rng = np.random.default_rng(9)
    first, second = random_groups(rng, [5] * 6, p=2), random_groups(rng, [5] * 7, p=2)
    a = bootstrap_covariance_ratio(first, second, 50, np.random.default_rng(3))
    b = bootstrap_covariance_ratio(first, second, 50, np.random.default_rng(3))
    c = bootstrap_covariance_ratio(first, second, 50, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_covariance_ratio(first, second, 0, np.random.default_rng(3))


def test_bootstrap_error_ignores_nan_replicates():
    values = [random.Random(10).gauss(0, 1) for _ in range(40)]
    replicates = np.array(values + [np.nan, np.nan])[:, None]
    assert bootstrap_error(replicates)[0] == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert np.isnan(bootstrap_error(np.array([[1.0], [np.nan]]))[0])


def test_data_vector_paths_follow_science_6_6_order():
    expected = [
        "power_spectra/ngal_0/cl", "bispectra/ngal_0/squeezed", "bispectra/ngal_0/isosceles",
        "bispectra/ngal_0/equilateral",
        *(f"smoothed_statistics/ngal_0/sl_2/{s}" for s in ("pdf", "peaks", "minima", "minkowski/v0",
                                                             "minkowski/v1", "minkowski/v2")),
        "smoothed_statistics/ngal_0/sl_10/pdf",
        "power_spectra/ngal_7/cl", "smoothed_statistics/ngal_7/sl_2.5/peaks",
        "power_spectra/ngal_15/cl",
    ]
    extra = ["smoothed_statistics/ngal_0/sl_2/sigma/0", "smoothed_statistics/ngal_0/sl_2/sigma/1",
             "plugins/mine/value"]
    shuffled = list(expected + extra)
    random.Random(11).shuffle(shuffled)
    assert data_vector_paths(shuffled) == expected
    assert data_vector_paths(["smoothed_statistics/ngal_0/sl_2/sigma/0"]) == []
