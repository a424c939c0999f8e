"""Running a stage's task list on all ranks with checkpoints, retries, progress and stop handling.

Rank 0 checks the manifest, merges the ledgers of earlier runs (any rank count), drops the tasks
already done and splits the rest by cost into contiguous ranges, one per rank (DESIGN.md §5–6). Each
rank processes its range; after each task its result is stored as an npz and recorded in the rank's
ledger. At task boundaries the ranks poll for a stop request; the one collective at the end tells
every rank whether to exit with code 75.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import CheckpointedExit
from lensing_ssc.parallel import Comm, StopAgreement, get_comm, mark_collective, root_then_bcast, split_by_cost
from lensing_ssc.processing.checkpoint import CheckpointStore, TaskRecord, task_key
from lensing_ssc.processing.interrupts import StopConditions
from lensing_ssc.processing.progress import Progress
from lensing_ssc.processing.resources import ResourceMonitor, format_rank_table
from lensing_ssc.processing.retry import call_with_retries

log = logging.getLogger("lensing_ssc.runner")


@dataclass(frozen=True)
class Task:
    """One unit of work and checkpoint: ``task_id`` is stable across runs, ``cost`` balances ranks."""

    task_id: int
    cost: float = 1.0
    payload: Any = None


@dataclass
class StageReport:
    """What one run of a stage did, job-wide."""

    stage: str
    tasks_total: int = 0
    tasks_done: int = 0
    tasks_skipped: int = 0
    tasks_retried: int = 0
    stopped: bool = False
    per_rank: List[Dict[str, float]] = field(default_factory=list)

    @property
    def peak_rss_mb(self) -> float:
        return max((row["peak_rss_mb"] for row in self.per_rank), default=0.0)


class StageRunner:
    """Runs ``process_task(task) -> {name: ndarray}`` over a task list, resumably, on all ranks."""

    def __init__(self, config: ProcessingConfig, stage: str, comm: Optional[Comm] = None,
                 started: Optional[float] = None):
        self.config = config
        self.stage = stage
        self.comm = comm or get_comm()
        self.store = CheckpointStore(config.checkpoint_root, stage, self.comm.rank,
                                     compress=config.compress_checkpoints)
        self.started = started if started is not None else self.comm.bcast(time.time())

    def run(self, tasks: Sequence[Task],
            process_task: Callable[[Task], Union[Mapping[str, np.ndarray], TaskRecord]],
            input_identity: Mapping[str, Any],
            around_tasks: Optional[Callable[[Sequence[Task]], ContextManager]] = None,
            verify_record: Optional[Callable[[str, Mapping], bool]] = None) -> StageReport:
        """Process every task not yet checkpointed (collective). Raises CheckpointedExit on a stop.

        ``process_task`` returns the task's arrays (stored as its checkpoint) or, for a task that stored
        its result itself, a :class:`TaskRecord` kept in the ledger; ``verify_record(task key, record)``
        then says on resume whether that result is still there and intact.

        ``around_tasks(mine)``, if given, is entered on every rank with the rank's own tasks (possibly
        none) after the split and left after the stop agreement: the place for collective set-up the
        tasks share, such as a node-shared input map.
        """
        config = self.config

        def plan():
            self.store.check_manifest(config.science_hash(), input_identity, config.pipeline.resume)
            done = self.store.completed_tasks(verify_record)
            self.store.consolidate(done)
            return sorted(done)

        done_keys = set(root_then_bcast(self.comm, plan))
        remaining = [task for task in tasks if task_key(task.task_id) not in done_keys]
        start, stop = split_by_cost([task.cost for task in remaining], self.comm.size)[self.comm.rank]
        mine = remaining[start:stop]
        report = StageReport(self.stage, tasks_total=len(tasks), tasks_skipped=len(tasks) - len(remaining))
        if self.comm.is_root and report.tasks_skipped:
            log.info("%s: %d of %d tasks already done (checkpoints), %d to do on %d rank(s)", self.stage,
                     report.tasks_skipped, len(tasks), len(remaining), self.comm.size)

        progress = Progress(self.stage, len(remaining), len(mine), self.comm.is_root)
        agreement = StopAgreement(self.comm)
        local = {"done": 0, "retried": 0}
        began = time.monotonic()
        longest_task_s = 0.0
        with ResourceMonitor(enabled=config.memory_monitoring) as monitor, \
                StopConditions(agreement, config.wall_time_budget_s, self.started) as conditions, \
                (around_tasks(mine) if around_tasks else contextlib.nullcontext()):
            for task in mine:
                if conditions.should_stop(longest_task_s):
                    break
                task_began = time.monotonic()
                result, retries = call_with_retries(
                    lambda: process_task(task), config.max_retries, config.pipeline.retry_backoff_s,
                    what=f"{self.stage} task {task.task_id} on rank {self.comm.rank}")
                if isinstance(result, TaskRecord):
                    self.store.save_record(task.task_id, result, config.checkpoint_interval)
                else:
                    self.store.save_task(task.task_id, result, config.checkpoint_interval)
                longest_task_s = max(longest_task_s, time.monotonic() - task_began)
                local["done"] += 1
                local["retried"] += retries
                progress.advance()
            self.store.flush()
            stopped = agreement.finish()
        progress.close()

        row = {"rank": self.comm.rank, "time_s": time.monotonic() - began, "tasks": local["done"],
               "retried": local["retried"], **monitor.summary()}
        report.per_rank = self.comm.allgather(row)
        report.tasks_done = sum(r["tasks"] for r in report.per_rank)
        report.tasks_retried = sum(r["retried"] for r in report.per_rank)
        report.stopped = stopped
        if self.comm.is_root:
            log.info("%s: per-rank summary\n%s", self.stage, format_rank_table(report.per_rank))
        if stopped:
            reason = conditions.reason or "a stop request on another rank"
            raise mark_collective(CheckpointedExit(f"{self.stage}: stopped at a task boundary ({reason}); "
                                   f"{report.tasks_skipped + report.tasks_done}/{len(tasks)} tasks are "
                                   "checkpointed; rerun the same command to resume"))
        return report

    def load(self, task: Task) -> Dict[str, np.ndarray]:
        """The stored result of a finished task (any rank may read any task)."""
        return self.store.load_task(task.task_id)
