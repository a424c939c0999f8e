"""ProcessingConfig: the one configuration object of lensing_ssc (DESIGN.md §4).

The YAML file has a few top-level keys (``data_dir``, ``output_dir``, ``seed``) and sections
(``pipeline``, ``preprocessing``, ``kappa``, ``analysis``, ``mock``, ``cosmology``, ``ensemble``).
The seed's flat attributes (``config.batch_size``, ``config.chunk_size``, ...) are aliases of section
keys, so ``ProcessingConfig(data_dir=..., output_dir=..., num_workers=8)`` and ``config.batch_size = 5``
work as the user-facing spec shows.

Validation collects every problem with its key path (``analysis.patch_size_deg: ...``) and raises
one :class:`ConfigError`; unknown keys get a "did you mean" suggestion.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

from lensing_ssc.core.errors import ConfigError


class _Invalid(ValueError):
    """Raised by a key checker; the message says what was expected."""


# ----------------------------------------------------------------------------------------------
# Key checkers: each returns the normalised value or raises _Invalid(expected ...).

def _int(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[Any], int]:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {value!r}")
        if lo is not None and value < lo:
            raise _Invalid(f"expected an integer >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise _Invalid(f"expected an integer <= {hi}, got {value}")
        return value
    return check


def _number(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False) -> Callable:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"expected a number, got {value!r}")
        value = float(value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise _Invalid(f"expected a number {'>' if lo_open else '>='} {lo}, got {value}")
        if hi is not None and value > hi:
            raise _Invalid(f"expected a number <= {hi}, got {value}")
        return value
    return check


def _bool(value):
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {value!r}")
    return value


def _string(value):
    if not isinstance(value, str) or not value:
        raise _Invalid(f"expected a non-empty string, got {value!r}")
    return value


def _optional(check: Callable) -> Callable:
    def optional_check(value):
        return None if value is None else check(value)
    return optional_check


def _choice(*choices: str) -> Callable:
    def check(value):
        if value not in choices:
            raise _Invalid(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    return check


def _list_of(check: Callable, min_len: int = 0, exact_len: Optional[int] = None) -> Callable:
    def list_check(value):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise _Invalid(f"expected a list, got {value!r}")
        if exact_len is not None and len(value) != exact_len:
            raise _Invalid(f"expected a list of {exact_len} items, got {len(value)}")
        if len(value) < min_len:
            raise _Invalid(f"expected at least {min_len} item(s), got {len(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(check(item))
            except _Invalid as exc:
                raise _Invalid(f"item {i}: {exc}") from None
        return out
    return list_check


def _sheet_range(value):
    pair = _list_of(_int(lo=0), exact_len=2)(value)
    if pair[0] >= pair[1]:
        raise _Invalid(f"expected [start, end] with start < end, got {pair}")
    return pair


def _statistics(value):
    names = _list_of(_string, min_len=1)(value)
    # Known names are checked against the plugin registry at pipeline set-up, where plugins exist.
    return names


def _families(value):
    if not isinstance(value, dict) or not value:
        raise _Invalid(f"expected a mapping family name -> list of file globs, got {value!r}")
    return {str(name): _list_of(_string, min_len=1)(globs) for name, globs in value.items()}


def _mapping(value):
    if not isinstance(value, dict):
        raise _Invalid(f"expected a mapping, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# The schema: section -> key -> (default, checker, description with unit). Defaults follow DESIGN.md §4
# and SCIENCE.md; docs/configuration.md is generated from it (config_reference_markdown).

SECTIONS: Dict[str, Dict[str, Tuple[Any, Callable, str]]] = {
    "pipeline": {
        "type": ("preprocessing", _choice("preprocessing", "kappa", "analysis", "run"),
                 "pipeline the YAML was written for (informational; the CLI command chooses the stage)"),
        "batch_size": (10, _int(lo=1),
                       "patches per analysis task (the unit of work and of checkpoint)"),
        "checkpoint_interval": (1, _int(lo=1),
                                "tasks between two writes of a rank's checkpoint ledger"),
        "max_retries": (3, _int(lo=0, hi=100),
                        "retries of a task after a transient I/O error (exponential backoff with jitter)"),
        "num_workers": (1, _int(lo=1),
                        "MPI ranks expected (informational; the launcher decides)"),
        "checkpoint_dir": (None, _optional(_string),
                           "checkpoint directory (default {output_dir}/checkpoints)"),
        "cache_dir": (None, _optional(_string),
                      "directory caching the patch projection geometry across maps and jobs (off when null)"),
        "compress_checkpoints": (False, _bool,
                                 "write task checkpoints as compressed npz"),
        "memory_limit_mb": (None, _optional(_number(lo=0, lo_open=True)),
                            "refuse to start a stage whose per-rank estimate exceeds this [MB]"),
        "memory_monitoring": (True, _bool,
                              "sample RSS and CPU per rank (psutil) during tasks"),
        "parallel_io": (True, _bool,
                        "analysis results files (stats/*.h5): true: every rank writes its own rows with parallel "
                        "HDF5 (h5py driver 'mpio') when h5py is built with MPI, else as false; false: the rows are "
                        "gathered on rank 0, which writes the file alone with plain h5py (same datasets)"),
        "node_shared_maps": (True, _bool,
                             "analysis: hold the full-sky map being analysed once per node in MPI-3 shared memory "
                             "(read by one rank per node) instead of once per rank; false: every rank reads its "
                             "own copy (8 B x 12 nside^2 each, 6 GiB at nside 8192)"),
        "wall_time_budget_s": (None, _optional(_number(lo=0, lo_open=True)),
                               "stop at a task boundary, checkpoint and exit 75 before this many seconds [s]"),
        "resume": ("resume", _choice("resume", "restart", "refuse"),
                   "resume from checkpoints, restart (discard them) or refuse to run when they exist"),
        "log_level": ("INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"),
                      "log level of rank 0 (other ranks log warnings and errors)"),
        "retry_backoff_s": (0.5, _number(lo=0),
                            "first retry delay; doubles per retry [s]"),
    },
    "preprocessing": {
        "sheet_range": ([20, 100], _sheet_range,
                        "[start, end): FastPM slice indices to turn into sheets"),
        "chunk_size": (10_000_000, _int(lo=1),
                       "usmesh rows read at a time per rank"),
        "validation_level": ("strict", _choice("strict", "lenient", "none"),
                             "strict: failed input and quality checks are errors; lenient: warnings; none: skipped"),
        "dataset": ("HEALPIX", _choice("HEALPIX", "particles"),
                    "usmesh route: pre-pixelised HEALPIX rows or raw particles (block 1/)"),
        "nside_out": (None, _optional(_int(lo=1)),
                      "HEALPix nside of the sheets for the particle route (default: the usmesh nside)"),
        "observer": ([0.0, 0.0, 0.0], _list_of(_number(), exact_len=3),
                     "observer position for the particle route [Mpc/h]"),
        "overwrite": (False, _bool,
                      "rewrite existing sheets"),
    },
    "kappa": {
        "source_redshifts": ([0.5, 1.0, 1.5, 2.0, 2.5], _list_of(_number(lo=0, lo_open=True), min_len=1),
                             "source redshifts of the convergence maps; each must lie within the mass sheets' "
                             "redshift range (a source beyond the farthest sheet is an error)"),
    },
    "analysis": {
        "patch_size_deg": (10.0, _number(lo=0, hi=90, lo_open=True),
                           "side of the square patches [deg]"),
        "statistics": (["power_spectrum", "bispectrum", "pdf", "peak_counts", "minima", "minkowski"],
                       _statistics, "statistics per patch: built-ins or registered plugin names"),
        "smoothing_lengths": ([2.0, 5.0, 8.0, 10.0], _list_of(_number(lo=0, lo_open=True), min_len=1),
                              "Gaussian smoothing sigmas for PDF, peaks, minima, MFs [arcmin]"),
        "xsize": (2048, _int(lo=8),
                  "pixels per patch side (even)"),
        "ngal": ([0, 7, 15, 30, 50], _list_of(_int(lo=0), min_len=1),
                 "galaxy densities for shape noise, 0 = noiseless [1/arcmin^2]"),
        "epsilon": (0.26, _number(lo=0, lo_open=True),
                    "shape-noise dispersion per galaxy"),
        "lmin": (300.0, _number(lo=0, lo_open=True),
                 "lowest multipole bin edge"),
        "lmax": (3000.0, _number(lo=0, lo_open=True),
                 "highest multipole bin edge"),
        "nbin": (8, _int(lo=1),
                 "number of log-spaced multipole bins"),
        "nu_bins": ([-4.0, 4.0, 8], _list_of(_number(), exact_len=3),
                    "[nu_min, nu_max, nbins]: signal-to-noise thresholds"),
        "noise_seed": (0, _int(lo=0),
                       "base seed of the shape noise (mixed with the simulation seed)"),
        "exclude_flagged_patches": (False, _bool,
                                    "leave replication-flagged patches out of /summary"),
        "centers": (None, _optional(_list_of(_list_of(_number(), exact_len=2), min_len=1)),
                    "explicit patch centres [[theta, phi], ...] [deg] instead of the Fibonacci ones"),
    },
    "mock": {  # defaults of lensing_ssc.mock.lightcone.mock_config_defaults()
        "nside": (128, _int(lo=1),
                  "HEALPix nside of the mock's HEALPIX rows"),
        "box_size": (500.0, _number(lo=0, lo_open=True),
                     "side of the periodic box [Mpc/h]"),
        "nc": (64, _int(lo=2),
               "grid cells per box side"),
        "z_max": (1.5, _number(lo=0, lo_open=True),
                  "maximum redshift of the light cone"),
        "nslices": (100, _int(lo=1),
                    "scale-factor slices of the light cone (FastPM lc_usmesh_nslices)"),
        "power_spectrum": ("eisenstein_hu", _choice("eisenstein_hu"),
                           "linear power spectrum model"),
        "seed": (100, _int(lo=0),
                 "random seed of the mock (also its simulation seed)"),
        "field": ("lognormal", _choice("lognormal", "gaussian"),
                  "density field: lognormal (unbiased) or clipped Gaussian"),
        "with_particles": (False, _bool,
                           "also write the particle block 1/"),
        "particles_per_cell": (0.125, _number(lo=0, lo_open=True),
                               "mean Poisson particles per grid cell"),
        "nevents": (2, _int(lo=1),
                    "light-cone write events (FastPM appends one per event)"),
        "sigma8": (0.8159, _number(lo=0, lo_open=True),
                   "sigma8 at z = 0"),
        "enabled": (False, _bool,
                    "lensing-ssc run generates the mock into data_dir first"),
    },
    "cosmology": {
        "H0": (67.74, _number(lo=0, lo_open=True),
               "Hubble constant [km/s/Mpc]"),
        "Om0": (0.309, _number(lo=0, hi=1, lo_open=True),
                "matter density parameter (flat LambdaCDM, no radiation)"),
    },
    "ensemble": {
        "families": (None, _optional(_families),
                     "family name -> list of globs of results files"),
        "exclude_patches": ([], _list_of(_int(lo=0)),
                            "patch indices left out of every family"),
        "exclude_flagged": (True, _bool,
                            "leave replication-flagged patches out"),
        "outlier_sigma": (None, _optional(_number(lo=0, lo_open=True)),
                          "drop patches beyond this many sigma (null: keep all)"),
        "bootstrap": (1000, _int(lo=0),
                      "bootstrap resamples over simulations for ratio errors"),
        "theory": (False, _bool,
                   "halo-model SSC prediction of the power-spectrum variance ratio first/second family (pyccl, "
                   "the optional extra lensing_ssc[theory]): written under /theory of the ensemble file and drawn "
                   "on the variance-ratio plot; without pyccl one log line and no overlay"),
        "theory_box_mpc_h": (None, _optional(_number(lo=0, lo_open=True)),
                             "periodic box side [Mpc/h] of the second family's simulations: the theory takes it to "
                             "lack the modes k < 2 pi/L (e.g. 625 for the original tiled runs); null: it lacks every "
                             "super-sample mode"),
    },
}

TOP_LEVEL: Dict[str, Tuple[Any, Callable, str]] = {
    "data_dir": (None, _optional(_string), "usmesh BigFile directory (input of preprocess; written by mock)"),
    "output_dir": ("output", _string, "root of all outputs (mass_sheets/, kappa/, stats/, plots/, checkpoints/)"),
    "seed": (None, _optional(_int(lo=0)), "simulation seed (default: from the usmesh attrs or the directory name)"),
}

# The seed's flat attribute names and where they live.
ALIASES: Dict[str, Tuple[str, str]] = {
    "batch_size": ("pipeline", "batch_size"),
    "checkpoint_interval": ("pipeline", "checkpoint_interval"),
    "max_retries": ("pipeline", "max_retries"),
    "num_workers": ("pipeline", "num_workers"),
    "checkpoint_dir": ("pipeline", "checkpoint_dir"),
    "cache_dir": ("pipeline", "cache_dir"),
    "compress_checkpoints": ("pipeline", "compress_checkpoints"),
    "memory_limit_mb": ("pipeline", "memory_limit_mb"),
    "memory_monitoring": ("pipeline", "memory_monitoring"),
    "parallel_io": ("pipeline", "parallel_io"),
    "wall_time_budget_s": ("pipeline", "wall_time_budget_s"),
    "chunk_size": ("preprocessing", "chunk_size"),
    "sheet_range": ("preprocessing", "sheet_range"),
    "patch_size_deg": ("analysis", "patch_size_deg"),
    "statistics": ("analysis", "statistics"),
    "smoothing_lengths": ("analysis", "smoothing_lengths"),
}

# Keys that change numbers in the outputs; the checkpoint manifest hashes only these.
SCIENCE_KEYS: Dict[str, Tuple[str, ...]] = {
    "preprocessing": ("dataset", "nside_out", "observer", "sheet_range"),
    "kappa": ("source_redshifts",),
    "analysis": ("patch_size_deg", "statistics", "smoothing_lengths", "xsize", "ngal", "epsilon", "lmin",
                 "lmax", "nbin", "nu_bins", "noise_seed", "centers"),
    "mock": tuple(key for key in SECTIONS["mock"] if key != "enabled"),
    "cosmology": ("H0", "Om0"),
}


def _suggest(key: str, known) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else f" (known keys: {', '.join(sorted(known))})"


class Section:
    """One config section: attribute access to its keys, e.g. ``config.analysis.patch_size_deg``."""

    def __init__(self, name: str, values: Dict[str, Any]):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config section '{self._name}' has no key '{key}'"
                                 f"{_suggest(key, self._values)}") from None

    def __setattr__(self, key, value):
        if key not in self._values:
            raise AttributeError(f"config section '{self._name}' has no key '{key}'"
                                 f"{_suggest(key, self._values)}")
        self._values[key] = value

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(self._values)

    def __repr__(self):
        return f"Section({self._name}, {self._values})"


class ProcessingConfig:
    """Configuration of every lensing_ssc stage.

    ``ProcessingConfig(data_dir=..., output_dir=..., num_workers=8)`` accepts top-level keys, the seed's
    flat aliases (``batch_size``, ``chunk_size``, ``checkpoint_dir``, ...) and whole sections as dicts
    (``analysis={"patch_size_deg": 5.0}``). Unknown names raise ConfigError at once; value checks run in
    :meth:`validate` (called by every pipeline before it starts), so attributes may be changed first.
    """

    def __init__(self, source: Optional[str] = None, **kwargs):
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "_top", {key: copy.deepcopy(default) for key, (default, _, _) in TOP_LEVEL.items()})
        object.__setattr__(self, "_sections", {
            name: Section(name, {key: copy.deepcopy(default) for key, (default, _, _) in spec.items()})
            for name, spec in SECTIONS.items()})
        problems = self._apply(kwargs)
        if problems:
            raise ConfigError(problems, source)

    def _apply(self, values: Dict[str, Any]) -> List[str]:
        """Set top-level keys, aliases and sections from ``values``; return the unknown-key problems."""
        problems: List[str] = []
        for key, value in values.items():
            if key in SECTIONS:
                value = {} if value is None else value  # a YAML section with every key commented out
                if not isinstance(value, dict):
                    problems.append(f"{key}: expected a mapping of keys, got {value!r}")
                    continue
                for sub_key, sub_value in value.items():
                    if sub_key in SECTIONS[key]:
                        self._sections[key]._values[sub_key] = sub_value
                    else:
                        problems.append(f"{key}.{sub_key}: unknown key{_suggest(sub_key, SECTIONS[key])}")
            elif key in TOP_LEVEL or key in ALIASES:
                setattr(self, key, value)
            else:
                problems.append(f"{key}: unknown key"
                                f"{_suggest(key, list(TOP_LEVEL) + list(SECTIONS) + list(ALIASES))}")
        return problems

    # -- attribute access ----------------------------------------------------------------------
    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        if key in self._sections:
            return self._sections[key]
        if key in self._top:
            return self._top[key]
        if key in ALIASES:
            section, sub_key = ALIASES[key]
            return self._sections[section]._values[sub_key]
        raise AttributeError(f"ProcessingConfig has no attribute '{key}'"
                             f"{_suggest(key, list(TOP_LEVEL) + list(SECTIONS) + list(ALIASES))}")

    def __setattr__(self, key, value):
        if key in self._top:
            self._top[key] = value
        elif key in ALIASES:
            section, sub_key = ALIASES[key]
            self._sections[section]._values[sub_key] = value
        else:
            raise AttributeError(f"ProcessingConfig has no attribute '{key}'"
                                 f"{_suggest(key, list(TOP_LEVEL) + list(ALIASES))}")

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: Optional[str] = None) -> "ProcessingConfig":
        """Build and validate a config from a parsed YAML mapping (all problems reported at once)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError([f"top level: expected a mapping of keys, got {type(data).__name__}"], source)
        config = cls(source=source)
        problems = config._apply(data) + config.problems()
        if problems:
            raise ConfigError(problems, source)
        return config

    @classmethod
    def from_yaml(cls, path) -> "ProcessingConfig":
        """Read a YAML file; relative ``data_dir``/``output_dir`` stay relative to the working directory."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError([f"cannot read config file: {exc.strerror}"], str(path)) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError([f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"], str(path)) from None
        return cls.from_dict(data, source=str(path))

    # -- validation ----------------------------------------------------------------------------
    def problems(self) -> List[str]:
        """Every problem of the current values, each prefixed by its key path."""
        found: List[str] = []
        for key, (_, check, _) in TOP_LEVEL.items():
            try:
                self._top[key] = check(self._top[key])
            except _Invalid as exc:
                found.append(f"{key}: {exc}")
        for name, spec in SECTIONS.items():
            values = self._sections[name]._values
            for key, (_, check, _) in spec.items():
                try:
                    values[key] = check(values[key])
                except _Invalid as exc:
                    found.append(f"{name}.{key}: {exc}")
        # Cross-key checks run only on keys that passed their own check (so they compare numbers).
        bad_keys = {problem.split(":", 1)[0] for problem in found}
        analysis = self._sections["analysis"]._values
        if not bad_keys & {"analysis.lmin", "analysis.lmax"} and analysis["lmin"] >= analysis["lmax"]:
            found.append(f"analysis.lmin: expected lmin < lmax, got {analysis['lmin']} >= {analysis['lmax']}")
        if "analysis.nu_bins" not in bad_keys:
            lo, hi, nbin = analysis["nu_bins"]
            if not (lo < hi and float(nbin).is_integer() and nbin >= 1):
                found.append(f"analysis.nu_bins: expected [nu_min, nu_max, nbin] with nu_min < nu_max and "
                             f"an integer nbin >= 1, got {analysis['nu_bins']}")
        return found

    def validate(self) -> "ProcessingConfig":
        """Raise one ConfigError listing every problem; return self when the config is valid."""
        found = self.problems()
        if found:
            raise ConfigError(found, self.source)
        return self

    # -- derived values --------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        out = copy.deepcopy(self._top)
        out.update({name: section.to_dict() for name, section in self._sections.items()})
        return out

    def science_hash(self) -> str:
        """sha256 of the science-relevant keys (SCIENCE_KEYS): a resumed run must match it."""
        science = {name: {key: self._sections[name]._values[key] for key in keys}
                   for name, keys in SCIENCE_KEYS.items()}
        science["seed"] = self._top["seed"]
        blob = json.dumps(science, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def checkpoint_root(self) -> Path:
        """``pipeline.checkpoint_dir`` or ``{output_dir}/checkpoints``."""
        chosen = self._sections["pipeline"]._values["checkpoint_dir"]
        return Path(chosen) if chosen else Path(self._top["output_dir"]) / "checkpoints"

    def __repr__(self):
        return f"ProcessingConfig({self.to_dict()})"


def config_reference_markdown() -> str:
    """docs/configuration.md: every key with its default and meaning, generated from the schema."""
    def rows(prefix, spec):
        return [f"| `{prefix}{key}` | `{json.dumps(default)}` | {text} |" for key, (default, _, text) in spec.items()]

    lines = ["# Configuration reference", "",
             "Generated from `lensing_ssc/core/config.py` by `python -m lensing_ssc.core.config > "
             "docs/configuration.md`; a test keeps it in step. Units are in brackets. The seed's flat names "
             f"({', '.join(f'`{a}`' for a in ALIASES)}) are aliases of the section keys below.", "",
             "| key | default | meaning |", "|---|---|---|"]
    lines += rows("", TOP_LEVEL)
    for name, spec in SECTIONS.items():
        lines += rows(f"{name}.", spec)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_reference_markdown(), end="")
