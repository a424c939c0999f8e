"""Checkpoint ledgers and partial results of a stage (DESIGN.md §6).

Layout under ``{checkpoint_dir}/{stage}/``::

    manifest.json          science-config hash, package version, input identity
    rank00000.json ...     per-rank ledger: task id -> {file, sha256} or {record}
    merged.json            ledger entries of earlier runs, merged by rank 0 at start-up
    tasks/{task}.npz       partial result of one task (compressed if compress_checkpoints)

A task counts as done only if a ledger lists it AND its npz exists with the recorded checksum; a
corrupt or truncated ledger is ignored with a warning (its tasks are redone). A task that stored its
result itself (the kappa stage writes straight into its partial maps) has a ledger *record* instead
of a file, which the stage checks against what it stored (``completed_tasks(verify_record)``). No
pickle anywhere.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Mapping, Optional

import numpy as np

from lensing_ssc import __version__
from lensing_ssc.core.errors import ConfigError
from lensing_ssc.io.atomic import atomic_output, write_json_atomic

log = logging.getLogger("lensing_ssc.checkpoint")

LEDGER_FORMAT = 1


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def task_key(task_id) -> str:
    """Stable string key of a task id (ints are zero-padded so files sort in task order)."""
    return f"{task_id:08d}" if isinstance(task_id, (int, np.integer)) else str(task_id)


@dataclass(frozen=True)
class TaskRecord:
    """What a task returns when it has stored its result itself: JSON-safe values for its ledger entry
    (e.g. a checksum of the bytes it wrote), checked by the stage on resume."""

    values: Dict[str, object]


class CheckpointStore:
    """Checkpoint files of one stage, as seen by one rank."""

    def __init__(self, root, stage: str, rank: int, compress: bool = False):
        self.directory = Path(root) / stage
        self.tasks_dir = self.directory / "tasks"
        self.stage = stage
        self.rank = rank
        self.compress = compress
        self._ledger: Dict[str, Dict[str, str]] = {}
        self._unsaved = 0

    # -- manifest -------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def check_manifest(self, science_hash: str, input_identity: Mapping, policy: str) -> None:
        """Rank 0: refuse to resume work made with another science config; start one if none.

        ``policy`` is ``pipeline.resume``: ``resume`` (default), ``restart`` (drop old checkpoints)
        or ``refuse`` (error if any checkpoint exists).
        """
        expected = {"science_hash": science_hash, "version": __version__, "input": dict(input_identity)}
        if policy == "restart" and self.directory.exists():
            shutil.rmtree(self.directory)
        if self.manifest_path.exists():
            try:
                found = json.loads(self.manifest_path.read_text())
            except (OSError, ValueError):
                log.warning("%s: unreadable checkpoint manifest; starting this stage afresh", self.manifest_path)
                shutil.rmtree(self.directory)
                found = None
            if found is not None:
                if policy == "refuse":
                    raise ConfigError([f"pipeline.resume: checkpoints exist in {self.directory} and resume is "
                                       "'refuse'; use --restart to discard them"])
                if found.get("science_hash") != science_hash or found.get("input") != expected["input"]:
                    raise ConfigError([f"pipeline.resume: checkpoints in {self.directory} were made with a "
                                       "different science config or input; rerun with --restart to discard them"])
                return
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.manifest_path, expected)

    # -- reading --------------------------------------------------------------------------------
    def _ledger_files(self) -> Iterable[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("rank*.json")) + [p for p in [self.directory / "merged.json"] if p.exists()]

    def completed_tasks(self, verify_record: Optional[Callable[[str, Mapping], bool]] = None
                        ) -> Dict[str, Dict[str, str]]:
        """Rank 0: union of all ledgers, keeping only entries whose npz exists with its checksum, and
        record entries for which ``verify_record(task key, record)`` is True (none without it)."""
        merged: Dict[str, Dict[str, str]] = {}
        for ledger_path in self._ledger_files():
            try:
                ledger = json.loads(ledger_path.read_text())
                entries = ledger["tasks"]
                if ledger.get("format") != LEDGER_FORMAT or not isinstance(entries, dict):
                    raise ValueError("unexpected ledger format")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s: corrupt checkpoint ledger (%s); its tasks will be redone", ledger_path, exc)
                continue
            merged.update(entries)
        verified = {}
        for key, entry in merged.items():
            if "record" in entry:
                if verify_record is not None and verify_record(key, entry["record"]):
                    verified[key] = entry
                else:
                    log.warning("%s: task %s does not match its checkpoint record (its stored result is "
                                "missing or changed); it will be redone", self.directory, key)
                continue
            path = self.tasks_dir / entry.get("file", "")
            if path.is_file() and file_sha256(path) == entry.get("sha256"):
                verified[key] = entry
            else:
                log.warning("%s: checkpoint of task %s missing or corrupt; it will be redone", path, key)
        return verified

    def consolidate(self, verified: Dict[str, Dict[str, str]]) -> None:
        """Rank 0, before the ranks start: fold all ledgers into merged.json and drop the rank files.

        Ranks of the new run then write fresh rank files that never overwrite earlier entries, so a
        restart on a different rank count loses nothing.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.directory / "merged.json", {"format": LEDGER_FORMAT, "tasks": verified})
        for path in self.directory.glob("rank*.json"):
            path.unlink()

    # -- writing --------------------------------------------------------------------------------
    def save_task(self, task_id, arrays: Mapping[str, np.ndarray], interval: int) -> None:
        """Store a task's partial result; flush this rank's ledger every ``interval`` tasks."""
        self.tasks_dir.mkdir(parents=True, exist_ok=True)
        name = f"{task_key(task_id)}.npz"
        final = self.tasks_dir / name
        with atomic_output(final) as temporary:
            with open(temporary, "wb") as handle:
                (np.savez_compressed if self.compress else np.savez)(handle, **arrays)
        self._add_entry(task_id, {"file": name, "sha256": file_sha256(final)}, interval)

    def save_record(self, task_id, record: TaskRecord, interval: int) -> None:
        """Mark done a task that stored its result itself, with its record; flush as :meth:`save_task`."""
        self._add_entry(task_id, {"record": dict(record.values)}, interval)

    def _add_entry(self, task_id, entry: Dict[str, object], interval: int) -> None:
        self._ledger[task_key(task_id)] = entry
        self._unsaved += 1
        if self._unsaved >= interval:
            self.flush()

    def flush(self) -> None:
        if not self._unsaved:
            return
        write_json_atomic(self.directory / f"rank{self.rank:05d}.json",
                          {"format": LEDGER_FORMAT, "rank": self.rank, "tasks": self._ledger})
        self._unsaved = 0

    def load_task(self, task_id) -> Dict[str, np.ndarray]:
        path = self.tasks_dir / f"{task_key(task_id)}.npz"
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    def clear(self) -> None:
        if self.directory.exists():
            shutil.rmtree(self.directory)

