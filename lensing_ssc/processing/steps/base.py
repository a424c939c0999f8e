"""BaseStep: one link of a pipeline (DESIGN.md §7, the seed's "Custom Steps")."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, List


class BaseStep(ABC):
    """A processing step: ``validate_input(data) -> bool``, ``execute(data)``, ``validate_output(data) -> bool``.

    ``data`` is whatever the previous step returned (the pipelines pass a dict). A step that returns
    False from a validation hook, or raises :class:`~lensing_ssc.core.errors.ValidationError`, stops the
    pipeline with a message naming the step. ``retryable`` steps are re-run on transient errors
    (OSError, TransientError); steps that call MPI collectives set it to False and retry per task.
    Steps that run task lists append their :class:`~lensing_ssc.processing.runner.StageReport` to
    ``reports`` and their final files to ``outputs``; the pipeline collects both.
    """

    retryable = True

    def __init__(self, config=None):
        self.config = config
        self.reports: List[Any] = []
        self.outputs: List[str] = []

    @property
    def name(self) -> str:
        return type(self).__name__

    def validate_input(self, input_data) -> bool:
        return True

    @abstractmethod
    def execute(self, input_data):
        """Do the step's work and return the data for the next step."""

    def validate_output(self, output_data) -> bool:
        return True
