"""Faults on the real stages of the tiny chain, launched as jobs (``mpiexec -n 2`` from serial pytest) and
interrupted from outside; every interrupted stage is rerun until done and its final outputs compared with
the uninterrupted one-rank reference (identical FITS data bytes and headers, identical HDF5 datasets).

* SIGKILL at seeded random moments, one after the other on the same output directory (each rerun
  resumes from the checkpoints the killed runs left), for preprocess, kappa and analyze.
* SIGTERM to the ranks / SIGUSR1 to mpiexec: exit 75 at a task boundary, then resume on 2 -> 1,
  1 -> 3 and 2 -> 2 ranks.
* A truncated ledger, a truncated task npz and a well-formed npz with wrong values in a real stage's
  checkpoint directory, and changed pixels of a checkpointed task in a partial kappa map: detected,
  those tasks redone.
* One rank raising mid-stage: the job ends, non-zero, within 30 s.

The jobs run through tests/reliability/driver.py, which slows every atomic commit down by
``COMMIT_DELAY_S`` (a slow filesystem; outputs unchanged) so that a random moment falls inside the
stage, and so that a run lasts at least its number of commits times the delay. ``LSSC_FAULTS_FULL=1``
kills each stage at many more moments.
"""
import json
import math
import os
import random
import re
import signal
import time

import numpy as np
import pytest

from chain import STAGES
from driver import COMMIT_DELAY_ENV, FAILING_PLUGIN
from job_control import Job, driver, run_job
from outputs import final_outputs, output_differences
from lensing_ssc.io.atomic import inprogress_path
from lensing_ssc.io.healpix_maps import read_header_and_layout
from lensing_ssc.processing.checkpoint import read_rank_ledger

COMMIT_DELAY_S = 0.05
SLOW = {COMMIT_DELAY_ENV: str(COMMIT_DELAY_S)}
KILLS_PER_STAGE = 20 if os.environ.get("LSSC_FAULTS_FULL") == "1" else 5
KILL_RANKS = 2
RESUME_RANKS = {"preprocess": 1, "kappa": 3, "analyze": 2}  # the rerun after the kills
STOP_EXIT_CODE = 75


def checkpointed(output, stage) -> int:
    """Tasks the stage's ledgers (rank ledgers and merged.json) list as done."""
    directory = output / STAGES[stage].checkpoints
    done = set()
    for path in directory.glob("rank*.jsonl"):
        done.update(ledger_tasks(path))
    try:
        done.update(json.loads((directory / "merged.json").read_text())["tasks"])
    except FileNotFoundError:  # not written yet
        pass
    return len(done)


def wait_until(condition, job, timeout=60.0):
    """Poll ``condition()`` every 5 ms until it is truthy (its value) or the job ends first (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if not job.running():
            return condition()
        time.sleep(0.005)
    raise AssertionError(f"condition not reached within {timeout} s")


def task_loop_start(output, stage, since_ns):
    """A condition for wait_until: rank 0 has merged the ledgers of this run (merged.json, renamed just
    before the tasks start). Its value: the time [s] of that rename, estimated from merged.json's
    mtime (written before the slowed commit) plus the commit delay, so that a late poll does not shift
    the moment of a kill."""
    merged = output / STAGES[stage].checkpoints / "merged.json"

    def started():
        try:
            written_ns = merged.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        return written_ns / 1e9 + COMMIT_DELAY_S if written_ns >= since_ns else None
    return started


def resume(stage, config, nranks, log_dir):
    """Rerun ``stage`` (no test hooks): it must finish in one go; returns the run."""
    done = run_job(driver(stage, config), nranks, log_dir)
    assert done.returncode == 0, done.stderr
    return done


def tasks_skipped(stderr) -> int:
    """The tasks a run found done in the checkpoints (its log line "N of M tasks already done")."""
    found = re.search(r"(\d+) of \d+ tasks already done", stderr)
    return int(found.group(1)) if found else 0


def assert_same_as_reference(reference, output, stage):
    assert output_differences(reference.directory, output, stages=(stage,)) == []


# ---------------------------------------------------------------------------------------------
# SIGKILL at random moments

def kill_repeatedly(stage, config, output, total, kills_wanted, rng, log_dir):
    """Run ``stage`` (``total`` tasks) on KILL_RANKS ranks and SIGKILL it at a random moment, again and
    again on the same output directory, until ``kills_wanted`` runs were killed or the stage is complete.
    Returns the kills as (tasks left before the run, what was killed).

    The moment: once the run's task loop has started, a uniform fraction (< 0.8) of the least time the
    rest of the stage takes up to its done marker (its remaining commits at COMMIT_DELAY_S each), so a
    kill lands inside the stage, from the first task to the final write. A kill takes down either
    every process of the job or one rank (mpiexec then ends the others).
    """
    layout, kills, nranks = STAGES[stage], [], KILL_RANKS
    while len(kills) < kills_wanted and not (output / layout.done_marker).exists():
        remaining = total - checkpointed(output, stage)
        launched_ns = time.time_ns()
        job = Job(driver(stage, config), nranks, log_dir, SLOW)
        loop_started = wait_until(task_loop_start(output, stage, launched_ns), job)
        if not loop_started:
            assert job.wait(timeout=60).returncode == 0
            break  # the run ended before its task loop: the stage was complete
        least_s = (math.ceil(remaining / nranks) * layout.commits_per_task + layout.commits_to_done) * COMMIT_DELAY_S
        time.sleep(max(0.0, loop_started + rng.uniform(0.0, 0.8) * least_s - time.time()))
        whole_job = rng.random() < 0.5
        if whole_job:
            job.kill()
        else:
            job.signal_ranks(signal.SIGKILL, [rng.choice(job.ranks())])
        ended = job.wait(timeout=30)
        assert ended.returncode != 0, f"run {len(kills)} finished before its kill:\n{ended.stderr}"
        kills.append((remaining, "job" if whole_job else "one rank"))
    return kills


@pytest.mark.parametrize("stage", ["preprocess", "kappa", "analyze"])
def test_sigkill_at_random_moments_then_rerun_gives_the_reference_outputs(reference, tmp_path, stage):
    """KILLS_PER_STAGE runs killed at seeded random moments (kill_repeatedly), each resuming from what the
    killed runs before it left; if a kill lands after the stage's done marker, the next ones start on a
    fresh copy of the inputs. Then one rerun finishes each output directory, redoing at most the one
    task per rank that was being checkpointed (checkpoint_interval 1; DESIGN.md §6), with the
    reference's outputs."""
    rng = random.Random(f"sigkill-{stage}")
    kills, workspaces = [], []
    while len(kills) < KILLS_PER_STAGE:
        output = tmp_path / f"out{len(workspaces)}"
        config = reference.workspace(stage, output)
        workspaces.append((output, config))
        more = kill_repeatedly(stage, config, output, reference.tasks(stage), KILLS_PER_STAGE - len(kills), rng,
                               tmp_path / "logs")
        assert more, "no run of the stage could be killed"
        kills += more
    for output, config in workspaces:
        unfinished = not (output / STAGES[stage].done_marker).exists()
        left_by_the_kills = checkpointed(output, stage)
        resumed = resume(stage, config, RESUME_RANKS[stage], tmp_path / "logs")
        assert not unfinished or tasks_skipped(resumed.stderr) >= left_by_the_kills - KILL_RANKS
        assert_same_as_reference(reference, output, stage)


# ---------------------------------------------------------------------------------------------
# Stop signals: exit 75 at a task boundary, then resume on another rank count

@pytest.mark.parametrize("stage, first_ranks, resume_ranks, how", [
    ("kappa", 2, 1, "SIGTERM to the ranks"),
    ("analyze", 1, 3, "SIGTERM to the ranks"),
    ("preprocess", 2, 2, "SIGUSR1 to mpiexec"),
])
def test_stop_signal_exits_75_and_resumes_on_another_rank_count(reference, tmp_path, stage, first_ranks,
                                                                resume_ranks, how):
    output = tmp_path / "out"
    config = reference.workspace(stage, output)
    total = reference.tasks(stage)
    job = Job(driver(stage, config), first_ranks, tmp_path / "logs", SLOW)
    assert wait_until(lambda: checkpointed(output, stage) >= 2, job), "the stage ended before 2 tasks"
    if how == "SIGUSR1 to mpiexec":
        job.signal_launcher(signal.SIGUSR1)
    else:
        job.signal_ranks(signal.SIGTERM)
    stopped = job.wait(timeout=60)
    assert stopped.returncode == STOP_EXIT_CODE, stopped.stderr
    assert "stopped at a task boundary (signal SIG" in stopped.stderr
    assert not (output / STAGES[stage].done_marker).exists()
    done_before = checkpointed(output, stage)
    assert 2 <= done_before < total
    resumed = resume(stage, config, resume_ranks, tmp_path / "logs")
    assert tasks_skipped(resumed.stderr) == done_before  # a stop loses nothing
    assert_same_as_reference(reference, output, stage)


# ---------------------------------------------------------------------------------------------
# Corrupt checkpoints

def ledger_tasks(path):
    """Task keys -> entries of a rank ledger's complete lines (empty if it does not exist (yet))."""
    return read_rank_ledger(path)[0]


def stopped_after_two_tasks_per_rank(stage, config, output, log_dir):
    """Run ``stage`` on 2 ranks until each rank's ledger lists 2 tasks, stop it with SIGTERM (exit 75);
    returns the two rank ledgers' paths."""
    directory = output / STAGES[stage].checkpoints
    ledgers = [directory / f"rank{rank:05d}.jsonl" for rank in (0, 1)]
    job = Job(driver(stage, config), 2, log_dir, SLOW)
    assert wait_until(lambda: all(len(ledger_tasks(path)) >= 2 for path in ledgers), job)
    job.signal_ranks(signal.SIGTERM)
    assert job.wait(timeout=60).returncode == STOP_EXIT_CODE
    return ledgers


def test_corrupt_ledger_and_task_files_are_detected_and_redone(reference, tmp_path):
    """A 2-rank analyze run stopped with SIGTERM leaves rank00000.jsonl and rank00001.jsonl. Then rank 1's
    ledger is cut in the middle of its last line, one of rank 0's task npz truncated and another
    replaced by a well-formed npz with other values (only its checksum tells): the one-rank rerun
    trusts none of them and redoes those tasks."""
    output = tmp_path / "out"
    config = reference.workspace("analyze", output)
    ledgers = stopped_after_two_tasks_per_rank("analyze", config, output, tmp_path / "logs")
    trusted = ledger_tasks(ledgers[0])
    ledgers[1].write_text(ledgers[1].read_text()[:-20])
    kept_of_rank_1 = ledger_tasks(ledgers[1])
    tasks_dir = output / STAGES["analyze"].checkpoints / "tasks"
    truncated, replaced = (tasks_dir / trusted[key]["file"] for key in sorted(trusted)[:2])
    truncated.write_bytes(truncated.read_bytes()[:100])
    with np.load(replaced) as stored:
        zeros = {name: np.zeros_like(stored[name]) for name in stored.files}
    np.savez(replaced, **zeros)

    resumed = resume("analyze", config, 1, tmp_path / "logs")
    assert f"{ledgers[1]}: corrupt checkpoint ledger" in resumed.stderr
    for path in (truncated, replaced):
        assert f"{path}: checkpoint of task" in resumed.stderr
    assert tasks_skipped(resumed.stderr) == len(trusted) - 2 + len(kept_of_rank_1)
    assert_same_as_reference(reference, output, "analyze")


def test_changed_kappa_pixels_of_a_checkpointed_task_are_detected_and_redone(reference, tmp_path):
    """The kappa stage writes each task's pixels straight into the partial map and checkpoints their
    CRC-32. After a 2-rank run stopped with SIGTERM, the pixels of one of rank 0's tasks are changed in
    the partial map (as a crash of the machine could leave them): the one-rank rerun redoes that task
    only and gives the reference map."""
    output = tmp_path / "out"
    config = reference.workspace("kappa", output)
    ledgers = stopped_after_two_tasks_per_rank("kappa", config, output, tmp_path / "logs")
    done_before = checkpointed(output, "kappa")
    changed = sorted(ledger_tasks(ledgers[0]))[0]
    manifest = json.loads((output / STAGES["kappa"].checkpoints / "manifest.json").read_text())
    pixels = manifest["input"]["pixels_per_task"]
    partial = inprogress_path(output / STAGES["kappa"].done_marker)
    layout = read_header_and_layout(partial)[1]
    with open(partial, "r+b") as handle:
        handle.seek(layout.data_offset + int(changed) * pixels * 4)
        handle.write(np.full(pixels, 0.5, dtype=">f4").tobytes())

    resumed = resume("kappa", config, 1, tmp_path / "logs")
    assert f"task {changed} does not match its checkpoint record" in resumed.stderr
    assert tasks_skipped(resumed.stderr) == done_before - 1
    assert_same_as_reference(reference, output, "kappa")


# ---------------------------------------------------------------------------------------------
# One rank raising mid-stage

def test_one_rank_raising_mid_stage_ends_the_job_promptly(reference, tmp_path):
    output = tmp_path / "out"
    config = reference.workspace("analyze", output, analysis={"statistics": ["power_spectrum", FAILING_PLUGIN]})
    failed = run_job(driver("analyze", config), 2, tmp_path / "logs", timeout=30)
    assert failed.returncode not in (0, STOP_EXIT_CODE), failed.stderr
    assert "[rank 1/2] fatal: RuntimeError: injected failure on rank 1" in failed.stderr
    assert final_outputs(output, stages=("analyze",)) == {}
    assert not list(output.rglob("*.inprogress"))
