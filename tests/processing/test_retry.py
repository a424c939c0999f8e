"""call_with_retries: which errors are retried, how often, with which delays."""
import logging
import random

import pytest

from lensing_ssc.core.errors import ConfigError, InputError, TransientError, ValidationError
from lensing_ssc.processing.retry import backoff_delays, call_with_retries


class Flaky:
    """A callable raising the given exceptions in turn, then returning ``value``."""

    def __init__(self, errors, value="done"):
        self.errors = list(errors)
        self.raised = []
        self.calls = 0
        self.value = value

    def __call__(self):
        self.calls += 1
        if self.errors:
            error = self.errors.pop(0)
            self.raised.append(error)
            raise error
        return self.value


def run(func, max_retries=3, base_s=0.2, seed=0):
    sleeps = []
    result = call_with_retries(func, max_retries, base_s, what="task 7", sleep=sleeps.append,
                               rng=random.Random(seed))
    return result, sleeps


@pytest.mark.parametrize("error", [OSError("NFS hiccup"), TimeoutError("slow disk"), TransientError("retry me")],
                         ids=lambda e: type(e).__name__)
def test_transient_errors_are_retried_until_success(error):
    func = Flaky([error, error])
    (value, retries), sleeps = run(func, max_retries=3)
    assert value == "done" and retries == 2 and func.calls == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("seed", range(5))
def test_delays_double_within_jitter(seed):
    base = 0.2
    func = Flaky([OSError("again")] * 4)
    _, sleeps = run(func, max_retries=4, base_s=base, seed=seed)
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):
        nominal = base * 2 ** attempt
        assert 0.5 * nominal <= delay <= 1.5 * nominal
    # the schedule depends only on the seed
    assert run(Flaky([OSError("again")] * 4), max_retries=4, base_s=base, seed=seed)[1] == sleeps


def test_backoff_delays_spread_over_the_jitter_range():
    delays = backoff_delays(max_retries=1, base_s=1.0, rng=random.Random(1)) + [
        backoff_delays(1, 1.0, random.Random(seed))[0] for seed in range(2, 400)]
    assert min(delays) < 0.55 and max(delays) > 1.45
    assert all(0.5 <= d <= 1.5 for d in delays)


def test_last_error_is_reraised_after_all_retries(caplog):
    errors = [OSError(f"attempt {i}") for i in range(4)]
    func = Flaky(errors)
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.retry"):
        with pytest.raises(OSError) as caught:
            run(func, max_retries=3)
    assert caught.value is errors[-1]
    assert func.calls == 4
    retries_logged = [r.getMessage() for r in caplog.records]
    assert len(retries_logged) == 3
    assert "task 7" in retries_logged[0] and "retry 1/3" in retries_logged[0]


def test_zero_retries_calls_once():
    func = Flaky([OSError("once")])
    with pytest.raises(OSError):
        run(func, max_retries=0)
    assert func.calls == 1


@pytest.mark.parametrize("error", [ValidationError("step S: bad input"), ConfigError("pipeline.x: bad"),
                                   ValueError("xsize: expected > 0"), InputError("sheet.fits: truncated"),
                                   KeyError("x"), RuntimeError("bug")],
                         ids=lambda e: type(e).__name__)
def test_non_transient_errors_are_never_retried(error):
    func = Flaky([error])
    sleeps = []
    with pytest.raises(type(error)) as caught:
        call_with_retries(func, 5, 0.1, what="task", sleep=sleeps.append, rng=random.Random(0))
    assert caught.value is error
    assert func.calls == 1 and sleeps == []
