"""Retrying transient failures with exponential backoff and jitter (DESIGN.md §7)."""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Tuple, Type, TypeVar

from lensing_ssc.core.errors import TransientError, is_disk_full

log = logging.getLogger("lensing_ssc.retry")

T = TypeVar("T")

# I/O hiccups on shared file systems surface as OSError; TransientError marks other retryable cases.
# Validation, config and input errors are never retried, nor are OSErrors that waiting cannot fix:
# a missing file, a permission, a full disk or quota (is_disk_full).
RETRYABLE: Tuple[Type[BaseException], ...] = (TransientError, OSError)
PERMANENT: Tuple[Type[BaseException], ...] = (FileNotFoundError, PermissionError, IsADirectoryError,
                                              NotADirectoryError)


def backoff_delays(max_retries: int, base_s: float, rng: random.Random):
    """Delays before retry 1..max_retries: base * 2**k, with +-50% jitter (seconds)."""
    return [base_s * 2 ** attempt * rng.uniform(0.5, 1.5) for attempt in range(max_retries)]


def call_with_retries(func: Callable[[], T], max_retries: int, base_s: float, what: str,
                      sleep: Callable[[float], None] = time.sleep, rng: random.Random = None) -> Tuple[T, int]:
    """Call ``func``; on a retryable error wait and try again up to ``max_retries`` times.

    Returns ``(result, retries_used)``. After the last attempt the error is re-raised unchanged
    (each retry is logged with ``what`` naming the task).
    """
    rng = rng or random.Random()
    delays = backoff_delays(max_retries, base_s, rng)
    for attempt in range(max_retries + 1):
        try:
            return func(), attempt
        except RETRYABLE as exc:
            if attempt == max_retries or isinstance(exc, PERMANENT) or is_disk_full(exc):
                raise
            log.warning("%s failed (%s: %s); retry %d/%d in %.2f s", what, type(exc).__name__, exc,
                        attempt + 1, max_retries, delays[attempt])
            sleep(delays[attempt])
    raise AssertionError("unreachable")
