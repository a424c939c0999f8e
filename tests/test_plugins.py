"""Plugin registry: the seed's decorator, refusals, lookup and entry-point discovery."""
import logging

import numpy as np
import pytest

from lensing_ssc import plugins
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.plugins import get_plugin, register_pipeline_plugin, registered_plugins


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    """Each test starts with no plugins and no installed entry points."""
    monkeypatch.setattr(plugins, "_REGISTRY", {})
    monkeypatch.setattr(plugins, "_DISCOVERED", False)
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [])


class FakeEntryPoint:
    def __init__(self, name, target):
        self.name = name
        self._target = target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def install_entry_points(monkeypatch, *entry_points):
    calls = []

    def entry_points_of(group):
        calls.append(group)
        return list(entry_points)

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points_of)
    return calls


def test_seed_snippet_registers_a_plugin():
    @register_pipeline_plugin("custom_analysis")
    class CustomAnalysisPlugin:
        def process(self, data, config):
            return {"mean": np.array([data.mean()])}

    plugin = get_plugin("custom_analysis")
    assert plugin is CustomAnalysisPlugin
    result = plugin().process(np.full((8, 8), 2.0), ProcessingConfig())
    np.testing.assert_array_equal(result["mean"], [2.0])
    assert registered_plugins() == {"custom_analysis": CustomAnalysisPlugin}


def test_duplicate_name_is_refused():
    @register_pipeline_plugin("peaks")
    class First:
        def process(self, data, config):
            return {}

    register_pipeline_plugin("peaks")(First)  # the same class again is harmless
    with pytest.raises(ValueError, match="plugin 'peaks' is already registered"):
        @register_pipeline_plugin("peaks")
        class Second:
            def process(self, data, config):
                return {}
    assert get_plugin("peaks") is First


@pytest.mark.parametrize("body", [{}, {"process": "not callable"}])
def test_class_without_process_is_refused(body):
    with pytest.raises(TypeError, match="plugin 'broken'.*process"):
        register_pipeline_plugin("broken")(type("Broken", (), body))
    assert "broken" not in registered_plugins()


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_name_is_refused(name):
    with pytest.raises(ValueError, match="plugin name"):
        register_pipeline_plugin(name)


def test_unknown_plugin_lists_registered_ones():
    with pytest.raises(KeyError, match="no pipeline plugin named 'voids' \\(registered: none\\)"):
        get_plugin("voids")
    for name in ("zeta", "alpha"):
        register_pipeline_plugin(name)(type(name, (), {"process": lambda self, data, config: {}}))
    with pytest.raises(KeyError, match="registered: alpha, zeta"):
        get_plugin("voids")


def test_entry_points_are_discovered_once(monkeypatch):
    class Installed:
        def process(self, data, config):
            return {"n": np.array([data.size])}

    calls = install_entry_points(monkeypatch, FakeEntryPoint("installed", Installed))
    assert get_plugin("installed") is Installed
    assert registered_plugins() == {"installed": Installed}
    assert calls == ["lensing_ssc.plugins"]


def test_broken_entry_points_are_skipped_with_a_warning(monkeypatch, caplog):
    class Good:
        def process(self, data, config):
            return {}

    class NoProcess:
        pass

    install_entry_points(monkeypatch, FakeEntryPoint("fails_to_import", ImportError("no module named x")),
                         FakeEntryPoint("no_process", NoProcess), FakeEntryPoint("good", Good))
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.plugins"):
        assert registered_plugins() == {"good": Good}
    assert "fails_to_import" in caplog.text and "no module named x" in caplog.text
    assert "no_process" in caplog.text


def test_entry_point_clashing_with_a_registered_plugin_is_skipped(monkeypatch, caplog):
    @register_pipeline_plugin("pdf")
    class BuiltIn:
        def process(self, data, config):
            return {}

    install_entry_points(monkeypatch, FakeEntryPoint("pdf", type("Impostor", (), {"process": BuiltIn.process})))
    with caplog.at_level(logging.WARNING, logger="lensing_ssc.plugins"):
        assert get_plugin("pdf") is BuiltIn
    assert "already registered" in caplog.text
