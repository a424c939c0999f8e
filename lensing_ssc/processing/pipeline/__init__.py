"""Pipelines: BasePipeline and the stage pipelines (the seed's API)."""
from lensing_ssc.processing.pipeline.analysis import AnalysisPipeline
from lensing_ssc.processing.pipeline.base_pipeline import BasePipeline, PipelineResult
from lensing_ssc.processing.pipeline.ensemble import EnsemblePipeline
from lensing_ssc.processing.pipeline.kappa import KappaPipeline
from lensing_ssc.processing.pipeline.mock import MockPipeline
from lensing_ssc.processing.pipeline.preprocessing import PreprocessingPipeline

__all__ = ["AnalysisPipeline", "BasePipeline", "EnsemblePipeline", "KappaPipeline", "MockPipeline", "PipelineResult",
           "PreprocessingPipeline"]
