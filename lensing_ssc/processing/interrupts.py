"""Stop requests at task boundaries: SIGTERM/SIGUSR1 and the wall-time budget (DESIGN.md §6)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Optional

from lensing_ssc.parallel import StopAgreement

log = logging.getLogger("lensing_ssc.interrupts")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_pending_reason: Optional[str] = None


def _remember_stop(signum, frame) -> None:
    global _pending_reason
    _pending_reason = _pending_reason or f"signal {signal.Signals(signum).name}"


def install_process_handlers() -> None:
    """Make SIGTERM/SIGUSR1 set a flag for the whole life of the process (the CLI calls this first).

    A signal that arrives outside a task loop (start-up, between stages, the final writes) is then
    remembered instead of killing the rank; the next task loop or stage boundary stops with code 75.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, _remember_stop)


def pending_stop() -> Optional[str]:
    """The reason of a stop signal received so far in this process, or None."""
    return _pending_reason


def wall_time_left_s(budget_s: Optional[float], started: float, now: Optional[float] = None) -> Optional[float]:
    """Seconds left before the job must stop: the tighter of ``wall_time_budget_s`` (from ``started``,
    a ``time.time()`` stamp) and the Slurm job end time (``SLURM_JOB_END_TIME``, epoch seconds), or None."""
    now = time.time() if now is None else now
    limits = []
    if budget_s is not None:
        limits.append(started + budget_s - now)
    slurm_end = os.environ.get("SLURM_JOB_END_TIME")
    if slurm_end and slurm_end.isdigit():
        limits.append(int(slurm_end) - now)
    return min(limits) if limits else None


class StopConditions:
    """Turns signals and an exhausted wall-time budget into a stop agreed by all ranks.

    Used as a context manager around a task loop: installs handlers for SIGTERM and SIGUSR1 (which only
    set a flag) and restores the previous handlers on exit. ``should_stop()`` is called at each task
    boundary with the duration of the longest task so far; the budget check keeps twice that (at least
    ``min_margin_s``) in reserve for the checkpoint and the exit.
    """

    def __init__(self, agreement: StopAgreement, wall_time_budget_s: Optional[float], started: float,
                 min_margin_s: float = 5.0):
        self.agreement = agreement
        self.budget_s = wall_time_budget_s
        self.started = started
        self.min_margin_s = min_margin_s
        self.reason: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        _remember_stop(signum, frame)
        self.reason = self.reason or _pending_reason
        self.agreement.request()

    def __enter__(self) -> "StopConditions":
        if _pending_reason:  # a signal arrived before this loop started
            self.reason = _pending_reason
            self.agreement.request()
        for signum in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, budget only
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def should_stop(self, longest_task_s: float = 0.0) -> bool:
        left = wall_time_left_s(self.budget_s, self.started)
        if left is not None and left < max(2 * longest_task_s, self.min_margin_s):
            self.reason = self.reason or f"wall-time budget ({left:.0f} s left)"
            self.agreement.request()
        return self.agreement.should_stop()
