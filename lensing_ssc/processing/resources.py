"""Per-rank CPU and memory sampling (psutil), memory-limit refusal and the end-of-run table."""
from __future__ import annotations

import threading
from typing import Dict, List, Optional

import psutil

from lensing_ssc.core.errors import ResourceError


class ResourceMonitor:
    """Samples this process's RSS and CPU in a background thread; keeps peaks and means."""

    def __init__(self, interval_s: float = 0.5, enabled: bool = True):
        self.interval_s = interval_s
        self.enabled = enabled
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.peak_rss_mb = self.current_rss_mb()
        self._cpu_samples: List[float] = []

    def current_rss_mb(self) -> float:
        return self._process.memory_info().rss / 2 ** 20

    def _sample(self) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, self.current_rss_mb())
        self._cpu_samples.append(self._process.cpu_percent(interval=None))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "ResourceMonitor":
        if self.enabled:
            self._process.cpu_percent(interval=None)
            self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._sample()

    def summary(self) -> Dict[str, float]:
        mean_cpu = sum(self._cpu_samples) / len(self._cpu_samples) if self._cpu_samples else 0.0
        return {"peak_rss_mb": round(self.peak_rss_mb, 1), "mean_cpu_percent": round(mean_cpu, 1)}


def check_memory_estimate(estimate_mb: float, limit_mb: Optional[float], what: str) -> None:
    """Refuse to start when the per-rank estimate exceeds ``memory_limit_mb`` (ResourceError)."""
    if limit_mb is not None and estimate_mb > limit_mb:
        raise ResourceError(f"{what} needs about {estimate_mb:.0f} MB per rank, more than "
                            f"pipeline.memory_limit_mb = {limit_mb:.0f} MB; use more ranks, a smaller "
                            "chunk_size/batch_size, or raise the limit")


def format_rank_table(rows: List[Dict[str, float]]) -> str:
    """End-of-run table: one line per rank with time, tasks and peak memory."""
    header = f"{'rank':>5} {'time_s':>9} {'tasks':>7} {'retried':>8} {'peak_MB':>9} {'cpu_%':>7}"
    lines = [header]
    for row in rows:
        lines.append(f"{row['rank']:>5d} {row['time_s']:>9.2f} {row['tasks']:>7d} {row['retried']:>8d} "
                     f"{row['peak_rss_mb']:>9.1f} {row['mean_cpu_percent']:>7.1f}")
    return "\n".join(lines)
