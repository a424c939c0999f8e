"""``lensing-ssc plan`` and ``status``: what each stage will do, what is done, memory per rank.

Rank 0 only, no writes. Estimates are per MPI rank, in MiB, for the dominant arrays:

* preprocess: the stage's own estimate (``preprocessing_steps.estimate_memory_mb``: for HEALPIX rows
  the reached bits (1/8 B per pixel), one pixel block and a chunk of rows per sorted run; for particles
  also the float64 accumulator, 8 B per pixel);
* kappa: the stage's own estimate (``kappa_steps.estimate_memory_mb``: one pixel-range task with a
  block of every sheet; rank 0 streams the maps task by task, so it needs no full-sky map);
* analyze: on the rank that reads the map (one per node with ``pipeline.node_shared_maps``), the RING
  float64 map, the float32 file read and the reorder's index slices (13 B per pixel), plus ~30 float64
  patch-sized work arrays (noise, DCT buffers, gradients); the node's other ranks need the work arrays only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from lensing_ssc.core.config import ProcessingConfig
from lensing_ssc.processing.checkpoint import read_rank_ledger

MIB = 2 ** 20


@dataclass
class StagePlan:
    """One stage: number of tasks and outputs, how many are done, and the per-rank memory estimate."""

    stage: str
    tasks: int
    done: int
    memory_mb: Optional[float]
    notes: List[str] = field(default_factory=list)

    def line(self) -> str:
        memory = f"{self.memory_mb:9.0f} MB/rank" if self.memory_mb is not None else f"{'?':>9} MB/rank"
        return f"{self.stage:<11} {self.done:>6}/{self.tasks:<6} done   {memory}   {'; '.join(self.notes)}"


def preprocess_memory_mb(nside: int, chunk_size: int, dataset: str = "HEALPIX") -> float:
    from lensing_ssc.processing.steps.preprocessing_steps import estimate_memory_mb
    return estimate_memory_mb(12 * nside ** 2, chunk_size, dataset)


def kappa_memory_mb(nside: int, n_sources: int, n_sheets: int) -> float:
    from lensing_ssc.processing.steps.kappa_steps import estimate_memory_mb
    return estimate_memory_mb(nside, n_sources, n_sheets)


def analysis_memory_mb(nside: int, xsize: int) -> float:
    # the reading rank: RING float64 map (8 B/pixel) + the float32 file read (4) + reorder index slices
    # (~1); measured 144 MiB at nside 1024 (docs/performance.md, Node-shared map)
    return (13 * 12 * nside ** 2 + 30 * xsize ** 2 * 8) / MIB


def _usmesh_summary(config: ProcessingConfig):
    """(nside, number of non-empty sheets in range, note) from the usmesh, or from the mock config."""
    from lensing_ssc.io.usmesh import UsmeshCatalog, UsmeshError
    start, end = config.preprocessing.sheet_range
    if config.data_dir and Path(config.data_dir).exists():
        try:
            catalog = UsmeshCatalog(config.data_dir)
            nside = config.preprocessing.nside_out or catalog.nside
            sheets = [i for i in catalog.nonempty_slices() if start <= i < end]
            return nside, len(sheets), f"usmesh {config.data_dir}: nside {catalog.nside}"
        except (UsmeshError, OSError, ValueError) as exc:
            return None, 0, f"cannot read usmesh {config.data_dir}: {exc}"
    if config.mock.enabled:
        a_min = 1.0 / (1.0 + config.mock.z_max)
        nslices = config.mock.nslices
        sheets = [i for i in range(start, min(end, nslices)) if (i + 1) / nslices > a_min]
        return config.mock.nside, len(sheets), f"mock to be generated at nside {config.mock.nside}"
    return None, 0, f"data_dir {config.data_dir} does not exist and mock.enabled is false"


def _nside_on_disk(output: Path) -> Optional[int]:
    """NSIDE of an existing sheet or kappa map (when the usmesh is not at hand)."""
    from lensing_ssc.core.errors import InputError
    from lensing_ssc.io.healpix_maps import read_header
    for path in sorted((output / "mass_sheets").glob("delta-sheet-*.fits")) + sorted((output / "kappa").glob("kappa_*.fits")):
        try:
            return int(read_header(path)["NSIDE"])
        except InputError:
            continue
    return None


def _count(directory: Path, pattern: str) -> int:
    return len(list(directory.glob(pattern))) if directory.exists() else 0


def plan(config: ProcessingConfig) -> List[StagePlan]:
    """The plan of every stage, from the config and whatever already exists on disk."""
    from lensing_ssc.science.fibonacci import patch_centers
    output = Path(config.output_dir)
    plans = []
    nside, n_sheets, note = _usmesh_summary(config)
    nside = nside or _nside_on_disk(output)
    if config.mock.enabled:
        exists = bool(config.data_dir) and Path(config.data_dir).exists()
        plans.append(StagePlan("mock", 1, int(exists), None, [f"writes {config.data_dir}"]))
    sheets_on_disk = _count(output / "mass_sheets", "delta-sheet-*.fits")
    memory = preprocess_memory_mb(nside, config.chunk_size, config.preprocessing.dataset) if nside else None
    plans.append(StagePlan("preprocess", n_sheets, sheets_on_disk, memory, [note]))
    n_sources = len(config.kappa.source_redshifts)
    plans.append(StagePlan("kappa", n_sources, _count(output / "kappa", "kappa_zs*_s*.fits"),
                           kappa_memory_mb(nside, n_sources, n_sheets or sheets_on_disk) if nside else None,
                           [f"source redshifts {config.kappa.source_redshifts}"]))
    try:
        n_patches = len(config.analysis.centers or []) or patch_centers(config.analysis.patch_size_deg)[0].size
        patch_note = f"{n_patches} patches of {config.analysis.patch_size_deg} deg per map, xsize {config.analysis.xsize}"
    except ValueError as exc:
        patch_note = f"no patches: {exc}"
    plans.append(StagePlan("analyze", n_sources, _count(output / "stats", "stats_zs*_s*_oa*.h5"),
                           analysis_memory_mb(nside, config.analysis.xsize) if nside else None, [patch_note]))
    return plans


def checkpointed_tasks(config: ProcessingConfig, stage: str) -> int:
    """Number of task entries in the checkpoint ledgers of ``stage`` (all its sub-stages)."""
    root = config.checkpoint_root / stage
    if not root.exists():
        return 0
    keys = set()
    for merged in root.rglob("merged.json"):
        try:
            keys.update(f"{merged.parent}/{key}" for key in json.loads(merged.read_text())["tasks"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    for ledger in root.rglob("rank*.jsonl"):
        keys.update(f"{ledger.parent}/{key}" for key in read_rank_ledger(ledger)[0])
    return len(keys)


def format_plan(config: ProcessingConfig, with_checkpoints: bool = False) -> str:
    lines = [f"{'stage':<11} {'outputs':>13}        {'memory':>17}   notes"]
    for stage_plan in plan(config):
        line = stage_plan.line()
        if with_checkpoints and stage_plan.stage != "mock":
            line += f"   ({checkpointed_tasks(config, stage_plan.stage)} checkpointed tasks)"
        lines.append(line)
    return "\n".join(lines)
