"""BasePipeline with the seed's "Custom Steps": results, timings, validation and retries (one rank)."""
import types

import numpy as np
import pytest

from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import CheckpointedExit, ConfigError, ValidationError
from lensing_ssc.parallel import is_collective
from lensing_ssc.processing.pipeline import BasePipeline, PipelineResult
from lensing_ssc.processing.pipeline import base_pipeline as base_pipeline_module
from lensing_ssc.processing.runner import StageReport
from lensing_ssc.processing.steps import BaseStep


class FakeClock:
    def __init__(self):
        self.now = 500.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(base_pipeline_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture
def config(tmp_path):
    config = ProcessingConfig(output_dir=str(tmp_path))
    config.pipeline.retry_backoff_s = 0
    return config


class CustomProcessingStep(BaseStep):
    """The seed's snippet: doubles ``data["values"]``; input must hold finite values."""

    def __init__(self, config, clock=None, seconds=0.0):
        super().__init__(config)
        self.clock, self.seconds = clock, seconds
        self.calls = 0

    def execute(self, input_data):
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.seconds
        self.outputs.append(f"doubled-{self.calls}.npy")
        return {"values": 2 * input_data["values"]}

    def validate_input(self, input_data):
        return "values" in input_data and bool(np.all(np.isfinite(input_data["values"])))

    def validate_output(self, output_data):
        return output_data["values"].shape == (4,)


class AddOneStep(BaseStep):
    def execute(self, input_data):
        return {"values": input_data["values"] + 1}


class FlakyStep(BaseStep):
    """Raises the given errors on its first calls, then passes the data through."""

    def __init__(self, config, errors, retryable=True):
        super().__init__(config)
        self.errors = list(errors)
        self.retryable = retryable
        self.calls = 0

    def execute(self, input_data):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return input_data


class CustomPipeline(BasePipeline):
    def __init__(self, config, steps, values=(1.0, 2.0, 3.0, 4.0)):
        super().__init__(config)
        self.steps = steps
        self.values = np.array(values)
        self.events = []

    def _create_steps(self):
        self.events.append("create_steps")
        return self.steps

    def _setup_resources(self):
        self.events.append("setup_resources")

    def initial_data(self):
        return {"values": self.values}


def test_seed_custom_step_pipeline_result(config, clock):
    double = CustomProcessingStep(config, clock, seconds=3.0)
    pipeline = CustomPipeline(config, [double, AddOneStep(config)])
    result = pipeline.execute()
    assert isinstance(result, PipelineResult)
    assert result.status == "success" and result.success
    np.testing.assert_array_equal(result.data["values"], [3.0, 5.0, 7.0, 9.0])
    assert result.step_timings == {"CustomProcessingStep": 3.0, "AddOneStep": 0.0}
    assert result.outputs == ["doubled-1.npy"]
    assert result.tasks_done == result.tasks_skipped == result.tasks_retried == 0
    assert result.peak_memory_mb > 0
    assert pipeline.events == ["setup_resources", "create_steps"]


def test_step_reports_are_summed(config):
    class ReportingStep(BaseStep):
        def __init__(self, config, done, skipped, retried, peak):
            super().__init__(config)
            self.row = (done, skipped, retried, peak)

        def execute(self, data):
            done, skipped, retried, peak = self.row
            self.reports.append(StageReport("s", tasks_total=done + skipped, tasks_done=done, tasks_skipped=skipped,
                                            tasks_retried=retried, per_rank=[{"peak_rss_mb": peak}]))
            return data

    class Second(ReportingStep):
        pass

    result = CustomPipeline(config, [ReportingStep(config, 5, 2, 1, 10.0),
                                     Second(config, 3, 0, 2, 1e7)]).execute()
    assert (result.tasks_done, result.tasks_skipped, result.tasks_retried) == (8, 2, 3)
    assert result.peak_memory_mb == 1e7


def test_input_validation_failure_names_the_step(config):
    double, after = CustomProcessingStep(config), AddOneStep(config)
    pipeline = CustomPipeline(config, [double, after], values=(1.0, np.nan, 3.0, 4.0))
    with pytest.raises(ValidationError, match="step CustomProcessingStep: input validation failed") as caught:
        pipeline.execute()
    assert is_collective(caught.value)
    assert double.calls == 0


def test_output_validation_failure_names_the_step(config):
    pipeline = CustomPipeline(config, [CustomProcessingStep(config)], values=(1.0, 2.0))
    with pytest.raises(ValidationError, match="step CustomProcessingStep: output validation failed"):
        pipeline.execute()


def test_validation_error_raised_by_a_step_is_not_retried(config):
    flaky = FlakyStep(config, [ValidationError("step FlakyStep: sheet 20 has NaNs")])
    config.pipeline.max_retries = 3
    with pytest.raises(ValidationError, match="sheet 20"):
        CustomPipeline(config, [flaky]).execute()
    assert flaky.calls == 1


def test_transient_os_error_is_retried_and_succeeds(config):
    config.pipeline.max_retries = 2
    flaky = FlakyStep(config, [OSError("stale NFS handle"), OSError("stale NFS handle")])
    result = CustomPipeline(config, [flaky, AddOneStep(config)]).execute()
    assert result.success and flaky.calls == 3
    np.testing.assert_array_equal(result.data["values"], [2.0, 3.0, 4.0, 5.0])


def test_too_many_transient_errors_fail(config):
    config.pipeline.max_retries = 1
    flaky = FlakyStep(config, [OSError("1"), OSError("2")])
    with pytest.raises(OSError, match="2"):
        CustomPipeline(config, [flaky]).execute()
    assert flaky.calls == 2


@pytest.mark.parametrize("error, retryable", [(ValueError("xsize: expected > 0"), True), (OSError("io"), False)])
def test_no_retry_for_value_errors_or_non_retryable_steps(config, error, retryable):
    config.pipeline.max_retries = 3
    flaky = FlakyStep(config, [error], retryable=retryable)
    with pytest.raises(type(error)):
        CustomPipeline(config, [flaky]).execute()
    assert flaky.calls == 1


def test_checkpointed_step_stops_the_pipeline(config, clock):
    class StoppedStep(BaseStep):
        def execute(self, data):
            clock.now += 2.0
            raise CheckpointedExit("toy: stopped at a task boundary (signal SIGTERM)")

    after = AddOneStep(config)
    result = CustomPipeline(config, [StoppedStep(config), after]).execute()
    assert result.status == "checkpointed" and not result.success
    assert "stopped at a task boundary" in result.message
    assert result.step_timings == {"StoppedStep": 2.0}


def test_invalid_config_is_refused_before_any_step(config):
    config.batch_size = 0
    double = CustomProcessingStep(config)
    pipeline = CustomPipeline(config, [double])
    with pytest.raises(ConfigError, match="pipeline.batch_size") as caught:
        pipeline.execute()
    assert is_collective(caught.value)
    assert double.calls == 0 and pipeline.events == []


def test_seed_pipeline_overriding_validate_config(config):
    class SeedPipeline(CustomPipeline):
        def _validate_config(self):
            super()._validate_config()
            if self.config.analysis.patch_size_deg > 20:
                raise ConfigError("analysis.patch_size_deg: this pipeline needs <= 20 deg")

    config.analysis.patch_size_deg = 30.0
    with pytest.raises(ConfigError, match="needs <= 20 deg"):
        SeedPipeline(config, [AddOneStep(config)]).execute()
