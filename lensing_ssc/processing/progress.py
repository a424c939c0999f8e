"""Progress with rate and ETA, aggregated on rank 0 (tqdm on a terminal, log lines in batch logs)."""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional

log = logging.getLogger("lensing_ssc.progress")


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:d}:{secs:02d}"


class Progress:
    """Counts finished tasks of a stage. Every rank calls :meth:`advance`; rank 0 reports.

    Rank 0 extrapolates the job-wide count from its own share (``total`` is the job-wide number of
    tasks left, ``local_total`` this rank's), which needs no communication; the final count is exact
    because every rank reports its own totals at the end of the stage.
    """

    def __init__(self, stage: str, total: int, local_total: int, is_root: bool,
                 interval_s: float = 10.0, use_tqdm: Optional[bool] = None):
        self.stage = stage
        self.total = total
        self.local_total = max(local_total, 1)
        self.is_root = is_root
        self.interval_s = interval_s
        self.done_local = 0
        self.start = time.monotonic()
        self._last_report = self.start
        self._bar = None
        if is_root and total:
            if use_tqdm is None:
                use_tqdm = sys.stderr.isatty()
            if use_tqdm:
                from tqdm import tqdm
                self._bar = tqdm(total=total, desc=stage, unit="task", dynamic_ncols=True)

    def estimate(self):
        """(job-wide tasks done, rate per second, ETA in seconds) from rank 0's share."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        fraction = self.done_local / self.local_total
        done = min(self.total, int(round(fraction * self.total)))
        rate = done / elapsed
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("inf")
        return done, rate, eta

    def advance(self, count: int = 1) -> None:
        self.done_local += count
        if not self.is_root or not self.total:
            return
        done, rate, eta = self.estimate()
        if self._bar is not None:
            self._bar.n = done
            self._bar.refresh()
            return
        now = time.monotonic()
        if now - self._last_report >= self.interval_s or self.done_local >= self.local_total:
            self._last_report = now
            eta_text = format_seconds(eta) if eta != float("inf") else "?"
            log.info("%s: %d/%d tasks (%.2f/s, ETA %s)", self.stage, done, self.total, rate, eta_text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.n = self.total
            self._bar.close()
