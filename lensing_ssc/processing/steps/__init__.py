"""Processing steps (the seed's API)."""
from lensing_ssc.processing.steps.analysis_steps import (DataLoadingStep, OutputWritingStep, PatchingStep,
                                                        ResultAggregationStep, StatisticsStep, ValidationStep)
from lensing_ssc.processing.steps.base import BaseStep

__all__ = ["BaseStep", "DataLoadingStep", "ValidationStep", "PatchingStep", "StatisticsStep",
           "ResultAggregationStep", "OutputWritingStep"]
