"""MockPipeline: writes the mock FastPM usmesh light cone named by ``data_dir`` from the ``mock:`` section.

One step, on rank 0 (the other ranks wait): :func:`lensing_ssc.mock.lightcone.write_mock_lightcone`
with the ``mock:`` keys, the ``cosmology:`` section (Om0, h = H0/100) and ``preprocessing.observer``.
The mock is written to ``data_dir.inprogress`` and renamed, then its parameters are recorded in
``data_dir/lensing_ssc_mock.json`` (written atomically; bigfile ignores files that are not blocks). An
existing mock with the same recorded parameters is kept unless ``preprocessing.overwrite`` or
``--restart``; one with other parameters is replaced; a ``data_dir`` that is not a lensing_ssc mock is
never replaced. With ``mock.enabled: false`` the stage does nothing (``lensing-ssc run`` then reads
``data_dir`` as real FastPM output).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

from lensing_ssc import __version__
from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.core.errors import ConfigError, InputError
from lensing_ssc.io.atomic import write_json_atomic
from lensing_ssc.io.usmesh import UsmeshCatalog, UsmeshError
from lensing_ssc.mock.lightcone import write_mock_lightcone
from lensing_ssc.parallel import get_comm, root_then_bcast
from lensing_ssc.processing.pipeline.base_pipeline import BasePipeline
from lensing_ssc.processing.steps.base import BaseStep
from lensing_ssc.processing.steps.preprocessing_steps import MOCK_LIBFASTPM_PREFIX

log = logging.getLogger("lensing_ssc.mock")

MOCK_RECORD = "lensing_ssc_mock.json"


def mock_parameters(config: ProcessingConfig) -> Dict[str, object]:
    """Keyword arguments of write_mock_lightcone from the config (JSON-safe)."""
    mock = config.mock
    return {"nside": mock.nside, "box_size": float(mock.box_size), "nc": mock.nc, "z_max": float(mock.z_max),
            "nslices": mock.nslices, "seed": mock.seed, "field": mock.field, "with_particles": mock.with_particles,
            "particles_per_cell": float(mock.particles_per_cell), "nevents": mock.nevents,
            "sigma8": float(mock.sigma8), "omega_m": float(config.cosmology.Om0),
            "h": float(config.cosmology.H0) / 100.0,
            "observer": [float(v) for v in config.preprocessing.observer]}


def mock_record(config: ProcessingConfig) -> Dict[str, object]:
    """What ``lensing_ssc_mock.json`` records to recognise the mock: the parameters, the P(k) model and the
    package version (the file also holds the writer's summary)."""
    return {"parameters": mock_parameters(config), "power_spectrum": config.mock.power_spectrum,
            "package_version": __version__}


def _read_record(path: Path) -> Optional[Dict[str, object]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_lensing_ssc_mock(path: Path) -> bool:
    try:
        version = UsmeshCatalog(str(path)).attrs.get("LibFastPMVersion", "")
    except UsmeshError:
        return False
    return str(version).startswith(MOCK_LIBFASTPM_PREFIX)


def write_configured_mock(config: ProcessingConfig) -> Dict[str, object]:
    """Rank 0: write (or keep) the mock at ``data_dir``; returns {"path", "written", "parameters", ...}."""
    path = Path(config.data_dir)
    record_path = path / MOCK_RECORD
    wanted = mock_record(config)
    force = config.preprocessing.overwrite or config.pipeline.resume == "restart"
    exists = path.exists()
    if exists and path.is_dir() and not any(path.iterdir()):
        path.rmdir()  # an empty directory made beforehand: nothing to protect
        exists = False
    if exists:
        record = _read_record(record_path)
        found = {key: record.get(key) for key in wanted} if isinstance(record, dict) else None
        if found is None and not _is_lensing_ssc_mock(path):
            raise InputError(f"{path}: data_dir exists and is not a lensing_ssc mock (no {MOCK_RECORD}, Header "
                             f"LibFastPMVersion not '{MOCK_LIBFASTPM_PREFIX}...'); refusing to replace it with "
                             "the mock (mock.enabled: true) - choose another data_dir or set mock.enabled: false")
        if found == wanted and not force:
            log.info("mock: %s exists with the same parameters; keeping it (preprocessing.overwrite or "
                     "--restart rewrites it)", path)
            return {"path": str(path), "written": False, "parameters": wanted["parameters"]}
        log.info("mock: replacing %s (%s)", path, "overwrite/--restart" if found == wanted else
                 "its parameters differ from the config" if found else "no parameter record")
    parameters = wanted["parameters"]
    try:
        summary = write_mock_lightcone(str(path), overwrite=exists, **parameters)
    except ValueError as exc:
        raise ConfigError([f"mock: {exc}"], config.source) from None
    write_json_atomic(record_path, {**wanted, "summary": {k: v for k, v in summary.items() if k != "path"}})
    log.info("mock: wrote %s (nside %d, %d particles, %d HEALPIX rows)", path, summary["nside"],
             summary["n_particles"], summary["nrows"])
    return {"path": str(path), "written": True, "parameters": parameters, **summary}


class MockLightConeStep(BaseStep):
    """Writes the configured mock usmesh on rank 0 (nothing when ``mock.enabled`` is false)."""

    retryable = False

    def execute(self, input_data):
        if not self.config.mock.enabled:
            if get_comm().is_root:
                log.info("mock: mock.enabled is false; nothing to write (data_dir is read as it is)")
            return {"mock": None}
        result = root_then_bcast(get_comm(), lambda: write_configured_mock(self.config))
        self.outputs.append(result["path"])
        return {"mock": result}


class MockPipeline(BasePipeline):
    """The ``lensing-ssc mock`` stage: the mock usmesh light cone at ``data_dir``."""

    def _validate_config(self) -> None:
        super()._validate_config()
        if self.config.mock.enabled and not self.config.data_dir:
            raise ConfigError(["data_dir: expected the directory to write the mock usmesh to "
                               "(mock.enabled is true), got nothing"], self.config.source)

    def _create_steps(self) -> List:
        return [MockLightConeStep(self.config)]


__all__ = ["MockPipeline", "MockLightConeStep", "mock_parameters", "write_configured_mock"]
