"""docs/configuration.md is generated from the config schema and must not drift from it."""
from conftest import REPO
from lensing_ssc.core.config import SECTIONS, TOP_LEVEL, config_reference_markdown


def test_configuration_reference_is_up_to_date():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == config_reference_markdown(), \
        "regenerate: .venv/bin/python -m lensing_ssc.core.config > docs/configuration.md"


def test_every_key_is_documented():
    for name, spec in list(SECTIONS.items()) + [("top level", TOP_LEVEL)]:
        for key, (_, _, text) in spec.items():
            assert len(text) > 10, f"{name}.{key} has no description"
