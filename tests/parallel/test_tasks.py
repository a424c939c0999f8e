"""split_by_cost: contiguous, complete, balanced and deterministic rank ranges.

hypothesis is not installed, so the properties are checked on seeded random cost lists of several
shapes (uniform, heavy-tailed, with zeros, fewer tasks than ranks).
"""
import random

import numpy as np
import pytest

from lensing_ssc.parallel import split_by_cost


def random_costs(rng: random.Random):
    n = rng.choice([0, 1, 2, 3, rng.randint(4, 12), rng.randint(13, 200)])
    kind = rng.choice(["uniform", "equal", "heavy", "zeros", "some_zeros", "integers"])
    if kind == "uniform":
        return [rng.uniform(0, 10) for _ in range(n)]
    if kind == "equal":
        return [1.0] * n
    if kind == "heavy":
        return [rng.paretovariate(1.2) for _ in range(n)]
    if kind == "zeros":
        return [0.0] * n
    if kind == "some_zeros":
        return [rng.choice([0.0, 0.0, rng.uniform(0, 5)]) for _ in range(n)]
    return [rng.randint(0, 8192) for _ in range(n)]  # rows per sheet


def check_split(costs, nranks):
    ranges = split_by_cost(costs, nranks)
    assert len(ranges) == nranks
    # contiguous and covering every task exactly once, in order
    assert ranges[0][0] == 0 and ranges[-1][1] == len(costs)
    for (start, stop), (next_start, _) in zip(ranges, ranges[1:]):
        assert start <= stop == next_start
    assert all(start <= stop for start, stop in ranges)
    if costs:
        cost = np.asarray(costs, dtype=float)
        total, tolerance = cost.sum(), 1e-6 * max(cost.sum(), 1.0)
        shares = [cost[start:stop].sum() for start, stop in ranges]
        # balanced: no rank gets more than an equal share plus one task
        assert max(shares) <= total / nranks + cost.max() + tolerance
        # tighter, from the midpoint rule: each share is within half a boundary task of total/nranks
        weight = np.concatenate([[0.0], cost, [0.0]])  # weight[i + 1] is task i's cost; 0 off the ends
        for (start, stop), share in zip(ranges, shares):
            if stop > start:
                assert share <= total / nranks + (weight[start + 1] + weight[stop]) / 2 + tolerance
            assert share >= total / nranks - (weight[start] + weight[stop + 1]) / 2 - tolerance
    # deterministic, whatever the sequence type
    assert split_by_cost(costs, nranks) == ranges
    assert split_by_cost(np.asarray(costs, dtype=float), nranks) == ranges
    assert split_by_cost(tuple(costs), nranks) == ranges
    return ranges


@pytest.mark.parametrize("seed", range(40))
def test_random_cost_lists(seed):
    rng = random.Random(seed)
    for _ in range(10):
        check_split(random_costs(rng), rng.randint(1, 9))


def test_equal_costs_split_evenly():
    assert check_split([1.0] * 12, 4) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    counts = [stop - start for start, stop in check_split([2.5] * 10, 3)]
    assert sorted(counts) == [3, 3, 4]


@pytest.mark.parametrize("nranks", range(1, 9))
def test_equal_costs_counts_differ_by_at_most_one(nranks):
    for ntasks in range(1, 40):
        counts = [stop - start for start, stop in check_split([1.0] * ntasks, nranks)]
        assert max(counts) - min(counts) <= 1, (ntasks, counts)


def test_two_equal_tasks_on_two_ranks():
    assert check_split([4.0, 4.0], 2) == [(0, 1), (1, 2)]


def test_zero_costs_split_by_count():
    counts = [stop - start for start, stop in check_split([0.0] * 10, 3)]
    assert max(counts) - min(counts) <= 1 and sum(counts) == 10


def test_fewer_tasks_than_ranks_leaves_empty_ranges():
    ranges = check_split([1.0, 1.0, 1.0], 5)
    sizes = [stop - start for start, stop in ranges]
    assert sorted(sizes) == [0, 0, 1, 1, 1]


def test_one_expensive_task_gets_a_rank_of_its_own():
    # 100 cheap rows then one huge sheet: the huge task must not share a rank with half the rest
    costs = [1.0] * 100 + [1000.0]
    ranges = check_split(costs, 2)
    assert ranges == [(0, 100), (100, 101)]


def test_one_rank_gets_everything_and_no_tasks_give_empty_ranges():
    assert split_by_cost([3.0, 0.0, 7.0], 1) == [(0, 3)]
    assert split_by_cost([], 3) == [(0, 0)] * 3


@pytest.mark.parametrize("costs, nranks, argument", [
    ([1.0], 0, "nranks"), ([1.0, -1.0], 2, "costs"), ([[1.0, 2.0]], 2, "costs"),
])
def test_bad_arguments(costs, nranks, argument):
    with pytest.raises(ValueError, match=argument):
        split_by_cost(costs, nranks)
