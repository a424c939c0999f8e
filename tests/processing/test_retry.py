"""call_with_retries: which errors are retried, how often, with which delays."""
import errno
import json
import logging
import random

import pytest

from lensing_ssc.core.errors import ConfigError, InputError, ResourceError, TransientError, ValidationError
from lensing_ssc.io.atomic import write_json_atomic
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
                                   KeyError("x"), RuntimeError("bug"), ResourceError("needs 9 GB"),
                                   OSError(errno.ENOSPC, "No space left on device"),
                                   OSError(errno.EDQUOT, "Disk quota exceeded", "stats/x.h5")],
                         ids=lambda e: errno.errorcode[e.errno] if getattr(e, "errno", None) else type(e).__name__)
def test_non_transient_errors_are_never_retried(error):
    func = Flaky([error])
    sleeps = []
    with pytest.raises(type(error)) as caught:
        call_with_retries(func, 5, 0.1, what="task", sleep=sleeps.append, rng=random.Random(0))
    assert caught.value is error
    assert func.calls == 1 and sleeps == []


def test_a_write_refused_by_a_full_disk_is_not_retried(tmp_path, monkeypatch):
    """ENOSPC inside an atomic write: one attempt, no sleep, a ResourceError naming the file."""
    attempts = []

    def full_disk(payload, handle, **options):
        attempts.append(handle.name)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    target = tmp_path / "out" / "report.json"
    sleeps = []
    with pytest.raises(ResourceError, match="no space left on device while writing") as caught:
        call_with_retries(lambda: write_json_atomic(target, {"a": 1}), 5, 0.1, what="task", sleep=sleeps.append,
                          rng=random.Random(0))
    assert str(caught.value).startswith(f"{target}: ")
    assert len(attempts) == 1 and sleeps == []
    assert list(target.parent.iterdir()) == []  # neither the file nor its *.inprogress
