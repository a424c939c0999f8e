"""Every shipped config in configs/ is valid as written (keys, types, ranges)."""
import pytest

from conftest import REPO
from lensing_ssc.core.config import ProcessingConfig

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path):
    ProcessingConfig.from_yaml(path)


def test_production_configs_use_the_original_settings():
    for family in ("bigbox", "tiled"):
        config = ProcessingConfig.from_yaml(REPO / "configs" / f"production_{family}.yaml")
        assert config.analysis.xsize == 2048 and config.analysis.patch_size_deg == 10.0
        assert config.kappa.source_redshifts == [0.5, 1.0, 1.5, 2.0, 2.5]
        assert config.analysis.ngal == [0, 7, 15, 30, 50]
        assert config.analysis.smoothing_lengths == [2.0, 5.0, 8.0, 10.0]
