"""BasePipeline: a chain of steps with validation, retries, timings and resource peaks (DESIGN.md §7)."""
from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Dict, List

from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import CheckpointedExit, ValidationError, exit_code_for
from lensing_ssc.parallel import get_comm, install_abort_hook, mark_collective
from lensing_ssc.processing.resources import ResourceMonitor
from lensing_ssc.processing.retry import call_with_retries

log = logging.getLogger("lensing_ssc.pipeline")


@dataclass
class PipelineResult:
    """Outcome of :meth:`BasePipeline.execute`.

    ``status`` is ``"success"`` or ``"checkpointed"`` (stopped by a signal or the wall-time budget;
    rerun to resume). Failures raise instead of returning a result.
    """

    status: str
    outputs: List[str] = field(default_factory=list)
    step_timings: Dict[str, float] = field(default_factory=dict)
    tasks_done: int = 0
    tasks_skipped: int = 0
    tasks_retried: int = 0
    peak_memory_mb: float = 0.0
    data: Any = None
    message: str = ""

    @property
    def success(self) -> bool:
        return self.status == "success"


class BasePipeline(ABC):
    """Runs ``_create_steps()`` in order on every rank.

    Subclasses implement ``_create_steps`` and may extend ``_validate_config`` (call super) and
    ``_setup_resources``; ``initial_data()`` gives the first step's input (None by default).
    """

    def __init__(self, config: ProcessingConfig):
        self.config = config
        self.comm = get_comm()

    @abstractmethod
    def _create_steps(self) -> List:
        """The steps, in execution order."""

    def _validate_config(self) -> None:
        self.config.validate()

    def _setup_resources(self) -> None:
        """Hook for resource set-up (directories, memory checks); nothing by default."""

    def initial_data(self):
        return None

    def _run_step(self, step, data):
        # Validation outcomes are agreed over ranks (collective), so all ranks stop together.
        if self.comm.any(not step.validate_input(data)):
            raise mark_collective(ValidationError(f"step {step.name}: input validation failed"))
        if step.retryable:
            output, _ = call_with_retries(lambda: step.execute(data), self.config.max_retries,
                                          self.config.pipeline.retry_backoff_s, what=f"step {step.name}")
        else:
            output = step.execute(data)
        if self.comm.any(not step.validate_output(output)):
            raise mark_collective(ValidationError(f"step {step.name}: output validation failed"))
        return output

    def execute(self) -> PipelineResult:
        """Run every step; returns a PipelineResult (raises on failure)."""
        install_abort_hook(self.comm, exit_code_for)
        try:
            self._validate_config()
        except Exception as exc:  # validation is deterministic: every rank raises the same error
            raise mark_collective(exc)
        self._setup_resources()
        result = PipelineResult(status="success")
        data = self.initial_data()
        with ResourceMonitor(enabled=self.config.memory_monitoring) as monitor:
            for step in self._create_steps():
                began = time.monotonic()
                try:
                    data = self._run_step(step, data)
                except CheckpointedExit as exc:
                    result.status, result.message = "checkpointed", str(exc)
                    break
                finally:
                    result.step_timings[step.name] = time.monotonic() - began
                    result.outputs.extend(step.outputs)
                    for report in step.reports:
                        result.tasks_done += report.tasks_done
                        result.tasks_skipped += report.tasks_skipped
                        result.tasks_retried += report.tasks_retried
                        result.peak_memory_mb = max(result.peak_memory_mb, report.peak_rss_mb)
        result.peak_memory_mb = max(result.peak_memory_mb, monitor.summary()["peak_rss_mb"])
        result.data = data
        return result
