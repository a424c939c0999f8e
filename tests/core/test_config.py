"""ProcessingConfig: the seed's construction and attributes, YAML loading, validation messages, hashing."""
import logging
import pickle

import pytest
import yaml

from conftest import REPO
from lensing_ssc.cli import main
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import ConfigError, exit_code_for
from lensing_ssc.parallel import mark_collective

SEED_YAML = REPO / "configs" / "processing.yaml"


@pytest.fixture
def restore_logging():
    """``main`` reconfigures the root logger (basicConfig force=True); put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# -- the seed's Python API ---------------------------------------------------------------------

def test_seed_construction():
    config = ProcessingConfig(data_dir="/path/to/data", output_dir="/path/to/output", num_workers=8)
    assert config.data_dir == "/path/to/data"
    assert config.output_dir == "/path/to/output"
    assert config.num_workers == 8
    assert config.pipeline.num_workers == 8
    assert config.validate() is config


# (alias, section, key, a value different from the default): the seed's troubleshooting snippets.
SEED_ATTRIBUTES = [
    ("batch_size", "pipeline", "batch_size", 5),
    ("memory_monitoring", "pipeline", "memory_monitoring", False),
    ("memory_limit_mb", "pipeline", "memory_limit_mb", 8192),
    ("num_workers", "pipeline", "num_workers", 16),
    ("parallel_io", "pipeline", "parallel_io", False),
    ("chunk_size", "preprocessing", "chunk_size", 25000),
    ("checkpoint_interval", "pipeline", "checkpoint_interval", 10),
    ("checkpoint_dir", "pipeline", "checkpoint_dir", "/fast/storage/checkpoints"),
    ("compress_checkpoints", "pipeline", "compress_checkpoints", True),
]


@pytest.mark.parametrize("alias, section, key, value", SEED_ATTRIBUTES)
def test_seed_attribute_set_lands_in_its_section(alias, section, key, value):
    config = ProcessingConfig()
    assert getattr(config, alias) != value, "pick a value that differs from the default"
    setattr(config, alias, value)
    assert getattr(config, alias) == value
    assert getattr(getattr(config, section), key) == value
    assert config.to_dict()[section][key] == value
    config.validate()


@pytest.mark.parametrize("alias, section, key, value", SEED_ATTRIBUTES)
def test_seed_attribute_as_keyword_and_via_section(alias, section, key, value):
    assert getattr(getattr(ProcessingConfig(**{alias: value}), section), key) == value
    config = ProcessingConfig()
    setattr(getattr(config, section), key, value)
    assert getattr(config, alias) == value


def test_unknown_attribute_is_refused_with_suggestion():
    config = ProcessingConfig()
    with pytest.raises(AttributeError, match="did you mean 'batch_size'"):
        config.batch_sise = 5
    with pytest.raises(AttributeError, match="did you mean 'patch_size_deg'"):
        config.analysis.patch_size = 5.0
    with pytest.raises(ConfigError, match="num_worker: unknown key.*did you mean 'num_workers'"):
        ProcessingConfig(num_worker=8)


def test_checkpoint_root_defaults_under_output_dir(tmp_path):
    config = ProcessingConfig(output_dir=str(tmp_path / "out"))
    assert config.checkpoint_root == tmp_path / "out" / "checkpoints"
    config.checkpoint_dir = str(tmp_path / "fast")
    assert config.checkpoint_root == tmp_path / "fast"


def test_seed_yaml_loads_with_its_values():
    config = ProcessingConfig.from_yaml(SEED_YAML)
    written = yaml.safe_load(SEED_YAML.read_text())
    for section, values in written.items():
        for key, value in values.items():
            assert getattr(getattr(config, section), key) == value, f"{section}.{key}"
    assert config.checkpoint_interval == 50 and config.chunk_size == 50000
    assert config.num_workers == 1  # not in the file: the default
    assert config.source == str(SEED_YAML)


def test_config_survives_pickling():
    """load_config broadcasts the ProcessingConfig object from rank 0."""
    config = ProcessingConfig(output_dir="out", batch_size=4, analysis={"xsize": 64})
    copy = pickle.loads(pickle.dumps(config))
    assert copy.to_dict() == config.to_dict()
    assert copy.batch_size == 4 and copy.analysis.xsize == 64
    assert copy.science_hash() == config.science_hash()


# -- validation messages through the CLI -------------------------------------------------------

# (YAML text or None for "no file", fragments the single error line must contain)
BROKEN_CONFIGS = {
    "unknown top-level key": ("ouput_dir: out\n", ["ouput_dir: unknown key", "did you mean 'output_dir'"]),
    "unknown section key": ("pipeline:\n  batch_sise: 3\n",
                            ["pipeline.batch_sise: unknown key", "did you mean 'batch_size'"]),
    "sheet_range of 3 items": ("preprocessing:\n  sheet_range: [20, 50, 100]\n",
                               ["preprocessing.sheet_range:", "list of 2 items, got 3"]),
    "sheet_range of floats": ("preprocessing:\n  sheet_range: [20.0, 100.5]\n",
                              ["preprocessing.sheet_range:", "expected an integer, got 20.0"]),
    "sheet_range start == end": ("preprocessing:\n  sheet_range: [50, 50]\n",
                                 ["preprocessing.sheet_range:", "start < end"]),
    "sheet_range start > end": ("preprocessing:\n  sheet_range: [60, 20]\n",
                                ["preprocessing.sheet_range:", "start < end"]),
    "patch_size_deg 0": ("analysis:\n  patch_size_deg: 0\n", ["analysis.patch_size_deg:", "> 0"]),
    "patch_size_deg 91": ("analysis:\n  patch_size_deg: 91\n", ["analysis.patch_size_deg:", "<= 90"]),
    "negative smoothing length": ("analysis:\n  smoothing_lengths: [2.0, -5.0]\n",
                                  ["analysis.smoothing_lengths:", "item 1", "-5.0"]),
    "string for batch_size": ("pipeline:\n  batch_size: ten\n",
                              ["pipeline.batch_size:", "expected an integer, got 'ten'"]),
    "bool for an integer": ("pipeline:\n  max_retries: true\n",
                            ["pipeline.max_retries:", "expected an integer, got True"]),
    "bad resume choice": ("pipeline:\n  resume: sometimes\n",
                          ["pipeline.resume:", "'resume', 'restart', 'refuse'", "'sometimes'"]),
    "section not a mapping": ("analysis: 5\n", ["analysis: expected a mapping"]),
    "lmin >= lmax": ("analysis:\n  lmin: 3000\n  lmax: 300\n", ["analysis.lmin:", "lmin < lmax"]),
    "nu_bins with a string": ("analysis:\n  nu_bins: [1, x, 3]\n", ["analysis.nu_bins:", "item 1"]),
    "nu_bins reversed": ("analysis:\n  nu_bins: [4, -4, 8]\n", ["analysis.nu_bins:", "nu_min < nu_max"]),
    "malformed YAML": ("pipeline:\n  batch_size: 3\n\tmax_retries: 2\n", ["not valid YAML", "line 3"]),
    "non-mapping top level": ("- a\n- b\n", ["top level: expected a mapping", "list"]),
    "missing file": (None, ["cannot read config file", "missing.yaml"]),
}


@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_validate_reports_broken_config_in_one_line(case, tmp_path, capsys, restore_logging):
    text, fragments = BROKEN_CONFIGS[case]
    path = tmp_path / "missing.yaml"
    if text is not None:
        path = tmp_path / "broken.yaml"
        path.write_text(text)
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"lensing-ssc: error: {path}: config error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_three_problems_are_reported_at_once(tmp_path, capsys, restore_logging):
    path = tmp_path / "three.yaml"
    path.write_text("ouput_dir: out\npipeline:\n  batch_size: 0\nanalysis:\n  patch_size_deg: 91\n")
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "3 config errors" in lines[0]
    for key_path in ("ouput_dir:", "pipeline.batch_size:", "analysis.patch_size_deg:"):
        assert key_path in lines[0]


def test_cross_key_check_reported_alongside_other_problems():
    with pytest.raises(ConfigError) as caught:
        ProcessingConfig.from_dict({"pipeline": {"batch_size": 0}, "analysis": {"lmin": 5000.0}})
    assert [p.split(":")[0] for p in caught.value.problems] == ["pipeline.batch_size", "analysis.lmin"]
    assert exit_code_for(caught.value) == 2


def test_validate_after_setting_a_bad_attribute():
    config = ProcessingConfig()
    config.batch_size = "5"
    with pytest.raises(ConfigError, match=r"pipeline\.batch_size: expected an integer, got '5'"):
        config.validate()


def test_config_error_survives_pickling():
    """Errors are broadcast from rank 0 to the other ranks (root_then_bcast)."""
    with pytest.raises(ConfigError) as caught:
        ProcessingConfig.from_dict({"pipeline": {"batch_size": 0, "resume": "x"}}, source="run.yaml")
    error = mark_collective(caught.value)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ConfigError
    assert str(copy) == str(error)
    assert copy.problems == error.problems and len(copy.problems) == 2
    assert copy.source == "run.yaml"
    assert copy.collective is True
    assert copy.exit_code == 2


# -- science hash ------------------------------------------------------------------------------

@pytest.mark.parametrize("section, key, value", [
    ("analysis", "xsize", 1024), ("analysis", "smoothing_lengths", [2.0]), ("cosmology", "Om0", 0.3),
    ("kappa", "source_redshifts", [1.0]), ("preprocessing", "sheet_range", [20, 50]), ("mock", "nside", 32),
])
def test_science_hash_changes_with_a_science_key(section, key, value):
    changed = ProcessingConfig(**{section: {key: value}})
    assert changed.science_hash() != ProcessingConfig().science_hash()


def test_science_hash_changes_with_the_simulation_seed():
    assert ProcessingConfig(seed=3).science_hash() != ProcessingConfig(seed=4).science_hash()


@pytest.mark.parametrize("section, key, value", [
    ("pipeline", "batch_size", 3), ("pipeline", "num_workers", 8), ("pipeline", "checkpoint_interval", 7),
    ("pipeline", "resume", "restart"), ("preprocessing", "chunk_size", 1000), ("ensemble", "bootstrap", 5),
])
def test_science_hash_ignores_a_non_science_key(section, key, value):
    changed = ProcessingConfig(**{section: {key: value}}, output_dir="elsewhere")
    assert changed.science_hash() == ProcessingConfig().science_hash()
