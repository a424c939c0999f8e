"""Checkpoint ledgers and partial results of a stage (DESIGN.md §6).

Layout under ``{checkpoint_dir}/{stage}/``::

    manifest.json          science-config hash, package version, input identity
    rank00000.jsonl ...    per-rank ledger, appended to: one JSON line per finished task,
                           {"format", "task", "entry": {file, sha256} or {record}}
    merged.json            ledger entries of earlier runs, merged by rank 0 at start-up
    tasks/{task}.npz       partial result of one task (compressed if compress_checkpoints)

A task counts as done only if a ledger lists it AND its npz exists with the recorded checksum; a
corrupt line of a rank ledger (a process killed in the middle of an append) or a corrupt merged.json
is ignored with a warning (its tasks are redone). A rank ledger is only ever appended to, one write per
flush: no rewrite, no rename, no fsync per task (a rename or fsync per task blocked 5-10 ms each on a
disk busy with the stage's own reads and writes, and costs a metadata round trip on a parallel file
system); a crash of the machine may lose its last lines, which only means a redo. A task that stored its
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
from typing import Callable, Dict, List, Mapping, Optional, Tuple

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


def read_rank_ledger(path) -> Tuple[Dict[str, Dict[str, str]], List[str]]:
    """(task key -> entry, problems) of a rank ledger: every complete, well-formed line; a problem
    (text naming the line) for each other line, such as the torn last line of a killed append."""
    entries: Dict[str, Dict[str, str]] = {}
    problems: List[str] = []
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"unreadable: {exc}"]
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        try:
            if not line.endswith("\n"):
                raise ValueError("line not finished")
            item = json.loads(line)
            if item.get("format") != LEDGER_FORMAT or not isinstance(item.get("entry"), dict):
                raise ValueError("unexpected ledger format")
            entries[str(item["task"])] = item["entry"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"line {number}: {exc}")
    return entries, problems


class CheckpointStore:
    """Checkpoint files of one stage, as seen by one rank."""

    def __init__(self, root, stage: str, rank: int, compress: bool = False):
        self.directory = Path(root) / stage
        self.tasks_dir = self.directory / "tasks"
        self.stage = stage
        self.rank = rank
        self.compress = compress
        self._unsaved: List[Dict[str, object]] = []

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
    def rank_ledger_paths(self) -> List[Path]:
        """The rank ledgers present (``rank*.jsonl``), sorted."""
        return sorted(self.directory.glob("rank*.jsonl")) if self.directory.exists() else []

    def _merged_entries(self) -> Dict[str, Dict[str, str]]:
        path = self.directory / "merged.json"
        if not path.exists():
            return {}
        try:
            ledger = json.loads(path.read_text())
            entries = ledger["tasks"]
            if ledger.get("format") != LEDGER_FORMAT or not isinstance(entries, dict):
                raise ValueError("unexpected ledger format")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: corrupt checkpoint ledger (%s); its tasks will be redone", path, exc)
            return {}
        return entries

    def completed_tasks(self, verify_record: Optional[Callable[[str, Mapping], bool]] = None
                        ) -> Dict[str, Dict[str, str]]:
        """Rank 0: union of all ledgers, keeping only entries whose npz exists with its checksum, and
        record entries for which ``verify_record(task key, record)`` is True (none without it)."""
        merged = self._merged_entries()
        for ledger_path in self.rank_ledger_paths():
            entries, problems = read_rank_ledger(ledger_path)
            for problem in problems:
                log.warning("%s: corrupt checkpoint ledger (%s); its task will be redone", ledger_path, problem)
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
        for path in self.rank_ledger_paths():
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
        self._unsaved.append({"format": LEDGER_FORMAT, "task": task_key(task_id), "entry": entry})
        if len(self._unsaved) >= interval:
            self.flush()

    def flush(self) -> None:
        """Append the entries saved since the last flush to this rank's ledger, in one write."""
        if not self._unsaved:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(line, sort_keys=True) + "\n" for line in self._unsaved)
        with open(self.directory / f"rank{self.rank:05d}.jsonl", "a") as ledger:
            ledger.write(lines)
        self._unsaved = []

    def load_task(self, task_id) -> Dict[str, np.ndarray]:
        path = self.tasks_dir / f"{task_key(task_id)}.npz"
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    def clear(self) -> None:
        if self.directory.exists():
            shutil.rmtree(self.directory)

