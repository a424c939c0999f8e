"""The tiny chain of the reliability tests: its config, the layout of its stages, and the reference run.

A demo-like config small enough for a few tasks per rank: a mock light cone at nside 32 with 20
scale-factor slices up to z = 1 (10 sheets: 10 preprocess tasks), one source plane at zs = 1.0 (12 kappa
tasks: one NESTED base pixel each), 59 patches of 20 deg at xsize 32 in batches of 8 (8 analysis tasks),
ngal [0, 30] and two smoothing lengths. The ``reference`` fixture (tests/conftest.py) runs it once, on one
rank, uninterrupted; every fault, resume and rank-count test compares its outputs with that run's.
"""
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import yaml

TINY_CHAIN = {
    "seed": None,  # from the mock (mock.seed)
    "mock": {"enabled": True, "nside": 32, "box_size": 500.0, "nc": 16, "z_max": 1.0, "nslices": 20, "seed": 5,
             "particles_per_cell": 0.125, "nevents": 2},
    "pipeline": {"batch_size": 8, "checkpoint_interval": 1, "memory_monitoring": False},
    "preprocessing": {"sheet_range": [0, 20], "chunk_size": 5000, "validation_level": "strict"},
    "kappa": {"source_redshifts": [1.0]},
    "analysis": {"patch_size_deg": 20.0, "xsize": 32, "ngal": [0, 30], "smoothing_lengths": [40.0, 60.0],
                 "lmin": 40.0, "lmax": 200.0, "nbin": 4},
}
CHAIN_STAGES = "mock,preprocess,kappa,analyze"
SEED = TINY_CHAIN["mock"]["seed"]
STATS_STEM = f"stats_zs1.0_s{SEED}_oa20"


@dataclass(frozen=True)
class StageLayout:
    """Where a stage reads its inputs (relative to output_dir; None: the usmesh), where its task checkpoints
    live, and the file whose existence marks it complete. ``commits_per_task`` and ``commits_to_done``
    count the atomic commits (file renames) a task makes at least and those made after the last task up
    to and including the done marker's: with every commit slowed down, they bound a run's time from below."""

    inputs: Optional[str]
    checkpoints: str
    done_marker: str
    commits_per_task: int
    commits_to_done: int


STAGES = {
    # task: (its sheet FITS, unless an earlier run wrote it,) npz, ledger; then qc.json, manifest.json
    "preprocess": StageLayout(None, "checkpoints/preprocess", "mass_sheets/manifest.json", 2, 2),
    # task: ledger (the pixels go straight into the partial map); then the kappa map (validation.json
    # follows it)
    "kappa": StageLayout("mass_sheets", "checkpoints/kappa", f"kappa/kappa_zs1.0_s{SEED}.fits", 1, 1),
    # task: npz, ledger; then the results file
    "analyze": StageLayout("kappa", f"checkpoints/analyze/{STATS_STEM}", f"stats/{STATS_STEM}.h5", 2, 1),
}


def write_chain_config(output_dir, data_dir, mock_enabled=False, **sections) -> Path:
    """``{output_dir}/tiny.yaml``: TINY_CHAIN with ``data_dir`` (None: no data_dir), ``output_dir`` and
    per-section overrides (``analysis={"xsize": 30}`` replaces one key of the section)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = {key: (dict(value) if isinstance(value, dict) else value) for key, value in TINY_CHAIN.items()}
    config["mock"]["enabled"] = mock_enabled
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    config.update(data_dir=None if data_dir is None else str(data_dir), output_dir=str(output_dir))
    path = output_dir / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class TinyChain:
    """The reference run: ``directory`` holds usmesh/, mass_sheets/, kappa/ and stats/."""

    directory: Path

    @property
    def usmesh(self) -> Path:
        return self.directory / "usmesh"

    def write_config(self, output_dir, **sections) -> Path:
        """A config for ``output_dir`` reading the reference mock (never rewritten: mock.enabled false)."""
        return write_chain_config(output_dir, self.usmesh, **sections)

    def workspace(self, stage: str, output_dir, **sections) -> Path:
        """``output_dir`` with the reference's input files of ``stage`` and a config; returns the config."""
        inputs = STAGES[stage].inputs
        if inputs is not None:
            shutil.copytree(self.directory / inputs, Path(output_dir) / inputs,
                            ignore=shutil.ignore_patterns("*.json", "*.png"))
        return self.write_config(output_dir, **sections)

    def tasks(self, stage: str) -> int:
        """Number of tasks of ``stage``: sheets; NESTED base pixels (one task each below nside 1024);
        batches of patches."""
        if stage == "preprocess":
            return len(list((self.directory / "mass_sheets").glob("delta-sheet-*.fits")))
        if stage == "kappa":
            return 12
        with h5py.File(self.directory / "stats" / f"{STATS_STEM}.h5", "r") as handle:
            return math.ceil(handle["patches/centers"].shape[0] / TINY_CHAIN["pipeline"]["batch_size"])
