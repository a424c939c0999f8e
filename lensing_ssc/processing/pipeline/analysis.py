"""AnalysisPipeline: kappa maps -> patch statistics in ``{output_dir}/stats/`` (the seed's five steps)."""
from __future__ import annotations

from lensing_ssc.core.errors import ConfigError
from lensing_ssc.plugins import get_plugin
from lensing_ssc.processing.pipeline.base_pipeline import BasePipeline
from lensing_ssc.processing.steps.analysis_steps import (DataLoadingStep, OutputWritingStep, PatchingStep,
                                                        ResultAggregationStep, StatisticsStep, ValidationStep)
from lensing_ssc.science.patch_analysis import BUILTIN_STATISTICS


class AnalysisPipeline(BasePipeline):
    """Kappa map loading, validation, patch extraction, statistical analysis, result aggregation,
    output writing. ``input_data`` (optional): a kappa map path, a directory or a list of paths;
    by default the maps in ``{output_dir}/kappa`` (else ``data_dir``)."""

    def __init__(self, config, input_data=None):
        super().__init__(config)
        self.input_data = input_data

    def initial_data(self):
        return self.input_data

    def _validate_config(self) -> None:
        super()._validate_config()
        problems = []
        for name in self.config.analysis.statistics:
            if name not in BUILTIN_STATISTICS:
                try:
                    get_plugin(name)
                except KeyError as exc:
                    problems.append(f"analysis.statistics: {exc.args[0]}; built-in statistics are "
                                    f"{', '.join(BUILTIN_STATISTICS)}")
        if self.config.analysis.xsize % 2:
            problems.append(f"analysis.xsize: expected an even number of pixels (the bispectrum estimator "
                            f"needs it), got {self.config.analysis.xsize}")
        if problems:
            raise ConfigError(problems, self.config.source)

    def _create_steps(self):
        return [DataLoadingStep(self.config), ValidationStep(self.config), PatchingStep(self.config),
                StatisticsStep(self.config), ResultAggregationStep(self.config), OutputWritingStep(self.config)]
