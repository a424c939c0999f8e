"""Plugin registry: ``@register_pipeline_plugin("name")`` and the entry-point group ``lensing_ssc.plugins``.

A plugin is a class with ``process(data, config)``. A plugin named in ``analysis.statistics`` runs on
each patch (``data`` is the noiseless, unsmoothed kappa patch, float64 (xsize, xsize)) and must return a dict of numpy arrays of fixed shape; its output lands under ``/plugins/{name}`` of the
results file.
"""
from __future__ import annotations

import logging
from importlib import metadata
from typing import Dict, Type

log = logging.getLogger("lensing_ssc.plugins")

ENTRY_POINT_GROUP = "lensing_ssc.plugins"

_REGISTRY: Dict[str, Type] = {}
_DISCOVERED = False


def register_pipeline_plugin(name: str):
    """Class decorator registering a plugin under ``name`` (must have a callable ``process``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"plugin name: expected a non-empty string, got {name!r}")

    def decorator(cls):
        if not callable(getattr(cls, "process", None)):
            raise TypeError(f"plugin '{name}': {cls!r} has no process(data, config) method")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"plugin '{name}' is already registered by {existing!r}")
        _REGISTRY[name] = cls
        return cls

    return decorator


def discover_entry_points() -> None:
    """Load plugins advertised by installed packages in the ``lensing_ssc.plugins`` group (once)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            register_pipeline_plugin(entry_point.name)(entry_point.load())
        except Exception as exc:  # a broken third-party plugin must not break the pipeline
            log.warning("plugin entry point %s could not be loaded: %s", entry_point.name, exc)


def get_plugin(name: str) -> Type:
    discover_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no pipeline plugin named '{name}' (registered: {', '.join(sorted(_REGISTRY)) or 'none'})") from None


def registered_plugins() -> Dict[str, Type]:
    discover_entry_points()
    return dict(_REGISTRY)
