"""Checkpoint/restart, stop signals and abort of the framework, on a toy pipeline of numbered tasks.

These tests launch real jobs (plain python and mpiexec) and interrupt them from outside.
"""
import random
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import yaml

from conftest import REPO, launch_command, mpi_environment, run_python

TOY = REPO / "tests" / "helpers" / "toy_pipeline.py"
NTASKS = 24


def write_config(tmp_path, **pipeline):
    config = {"output_dir": str(tmp_path / "out"), "pipeline": {"checkpoint_interval": 1, **pipeline}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def expected_output():
    return np.stack([np.sin(np.arange(1000) * (i + 1)) for i in range(NTASKS)])


def start(config, nranks, sleep_s, *extra):
    return subprocess.Popen(launch_command([TOY, config, NTASKS, sleep_s, *extra], nranks),
                            env=mpi_environment(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_checkpoints(tmp_path, minimum, timeout=60):
    tasks_dir = tmp_path / "out" / "checkpoints" / "toy" / "tasks"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tasks_dir.exists() and len(list(tasks_dir.glob("*.npz"))) >= minimum:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {minimum} checkpoints in {tasks_dir} after {timeout} s")


def python_ranks(process):
    """The python rank processes of a job started by ``start`` (the process itself on one rank)."""
    parent = psutil.Process(process.pid)
    children = [p for p in parent.children(recursive=True) if "python" in p.name()]
    return children or [parent]


def test_uninterrupted_run_writes_all_tasks(tmp_path):
    config = write_config(tmp_path)
    done = run_python([TOY, config, NTASKS, 0])
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "toy.npy"), expected_output())
    assert not list((tmp_path / "out").glob("*.inprogress"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_moment_then_rerun_gives_same_output(tmp_path, seed):
    config = write_config(tmp_path)
    rng = random.Random(seed)
    job = start(config, 2, 0.05)
    wait_for_checkpoints(tmp_path, rng.randint(1, 6))
    time.sleep(rng.uniform(0, 0.2))
    for rank in python_ranks(job):
        rank.kill()
    job.kill()
    job.wait(timeout=30)
    assert not (tmp_path / "out" / "toy.npy").exists(), "a killed job must not leave a final output"
    rerun = run_python([TOY, config, NTASKS, 0], nranks=2)
    assert rerun.returncode == 0, rerun.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "toy.npy"), expected_output())


def test_sigterm_checkpoints_exits_75_and_resumes_on_other_rank_count(tmp_path):
    config = write_config(tmp_path)
    job = start(config, 2, 0.2)
    wait_for_checkpoints(tmp_path, 3)
    for rank in python_ranks(job):
        rank.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 75, err
    assert "stopped at a task boundary" in err
    assert not (tmp_path / "out" / "toy.npy").exists()
    done_before = len(list((tmp_path / "out" / "checkpoints" / "toy" / "tasks").glob("*.npz")))
    assert 3 <= done_before < NTASKS
    rerun = run_python([TOY, config, NTASKS, 0], nranks=3)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} of {NTASKS} tasks already done" in rerun.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "toy.npy"), expected_output())


def test_sigusr1_to_mpiexec_is_forwarded_and_checkpoints(tmp_path):
    config = write_config(tmp_path)
    job = start(config, 2, 0.2)
    wait_for_checkpoints(tmp_path, 2)
    job.send_signal(signal.SIGUSR1)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 75, err


def test_wall_time_budget_stops_with_75_then_resume_finishes(tmp_path):
    config = write_config(tmp_path, wall_time_budget_s=7.0)
    first = run_python([TOY, config, NTASKS, 0.5], nranks=2, timeout=60)
    assert first.returncode == 75, first.stderr
    assert "wall-time budget" in first.stderr
    config = write_config(tmp_path)
    second = run_python([TOY, config, NTASKS, 0], nranks=1)
    assert second.returncode == 0, second.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "toy.npy"), expected_output())


def test_exception_on_one_rank_aborts_the_job_quickly(tmp_path):
    config = write_config(tmp_path)
    began = time.monotonic()
    failed = run_python([TOY, config, NTASKS, 0.3, 1], nranks=2, timeout=60)
    elapsed = time.monotonic() - began
    assert failed.returncode != 0
    assert "injected failure on rank 1" in failed.stderr
    assert "[rank 1/2] fatal" in failed.stderr
    assert elapsed < 30
    assert not (tmp_path / "out" / "toy.npy").exists()


def test_corrupt_ledger_is_detected_and_tasks_redone(tmp_path):
    config = write_config(tmp_path)
    first = run_python([TOY, config, NTASKS, 0])
    assert first.returncode == 0, first.stderr
    (tmp_path / "out" / "toy.npy").unlink()
    checkpoint_dir = tmp_path / "out" / "checkpoints" / "toy"
    ledger = next(checkpoint_dir.glob("rank*.jsonl"))
    text = ledger.read_text()
    ledger.write_text(text[: text.index("\n", len(text) // 2) - 5])  # truncated inside a line
    victim = sorted((checkpoint_dir / "tasks").glob("*.npz"))[5]
    victim.write_bytes(b"garbage")
    rerun = run_python([TOY, config, NTASKS, 0])
    assert rerun.returncode == 0, rerun.stderr
    assert "corrupt checkpoint ledger" in rerun.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "toy.npy"), expected_output())


def test_resume_with_changed_science_config_is_refused(tmp_path):
    config = write_config(tmp_path)
    job = start(config, 1, 0.2)
    wait_for_checkpoints(tmp_path, 2)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=30)
    text = yaml.safe_load(config.read_text())
    text["analysis"] = {"patch_size_deg": 5.0}
    config.write_text(yaml.safe_dump(text))
    refused = run_python([TOY, config, NTASKS, 0])
    assert refused.returncode == 2
    assert "different science config" in refused.stderr
