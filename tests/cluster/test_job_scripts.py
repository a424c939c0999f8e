"""The job scripts in jobs/: requeue on exit 75, the local rerun loop, the PBS timer and resubmission.

The scripts run under plain bash with fake scheduler commands first on PATH: ``srun`` runs its command
with ``mpiexec -n 2``; ``scontrol``, ``qsub`` and ``squeue`` record their arguments in a file (``squeue``
prints a job end time when FAKE_END_IN_S is set). The MPI job is the toy pipeline of numbered tasks on
the real framework (tests/helpers/toy_pipeline.py), whose final output is known exactly.
"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import yaml

from conftest import REPO, mpi_environment
from lensing_ssc.core.config import ProcessingConfig

JOBS = REPO / "jobs"
TOY = REPO / "tests" / "helpers" / "toy_pipeline.py"
SCRIPTS = ["common.sh", "slurm_run.sh", "slurm_array.sh", "pbs_run.sh", "local.sh"]
JOB_ID = "4242"

FAKES = {
    # srun's own options (-n N, --cpu-bind=...) are recorded and dropped: the command runs on 2 ranks.
    "srun": ('echo "srun $*" >> "$FAKE_CALLS"\n'
             'while [ "${1#-}" != "$1" ]; do if [ "$1" = -n ]; then shift; fi; shift; done\n'
             'exec mpiexec -n 2 "$@"\n'),
    "scontrol": 'echo "scontrol $*" >> "$FAKE_CALLS"\n',
    "qsub": 'echo "qsub $*" >> "$FAKE_CALLS"\n',
    "squeue": ('echo "squeue $*" >> "$FAKE_CALLS"\n[ -n "$FAKE_END_IN_S" ] || exit 1\n'
               'date -d "@$(( $(date +%s) + FAKE_END_IN_S ))" +%Y-%m-%dT%H:%M:%S\n'),
    # The toy takes CONFIG NTASKS SLEEP_S; the scripts append CONFIG to LSSC_CMD.
    "toy": f'exec "{sys.executable}" "{TOY}" "$1" "$TOY_NTASKS" "$TOY_SLEEP_S"\n',
    # Exits 75 on SIGUSR1 or 1 on SIGTERM, recording which.
    "stoppable": ('trap \'kill $pid; echo "got USR1" >> "$FAKE_CALLS"; exit 75\' USR1\n'
                  'trap \'kill $pid; echo "got TERM" >> "$FAKE_CALLS"; exit 1\' TERM\n'
                  'sleep 30 > /dev/null 2>&1 &\npid=$!\necho ready >> "$FAKE_CALLS"\nwait $pid\n'),
    # Dies of SIGUSR1, as a rank does outside a stage's task loop.
    "unprepared": 'echo ready >> "$FAKE_CALLS"\nexec sleep 30\n',
    "always75": 'echo "always75 $*" >> "$FAKE_CALLS"\nexit 75\n',
    "fail2": 'exit 2\n',
    "record": 'echo "record $*" >> "$FAKE_CALLS"\n',
}


def expected_output(ntasks):
    """What toy_pipeline.py writes after an uninterrupted run of ``ntasks`` tasks."""
    return np.stack([np.sin(np.arange(1000) * (i + 1)) for i in range(ntasks)])


class Cluster:
    """A temporary directory with the fake commands, a toy config and the environment of a job."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.calls_file = tmp_path / "calls.txt"
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, body in FAKES.items():
            path = bin_dir / name
            path.write_text("#!/bin/sh\n" + body)
            path.chmod(path.stat().st_mode | stat.S_IEXEC)
        self.env = {k: v for k, v in mpi_environment().items()
                    if k != "NP" and not k.startswith(("SLURM_", "PBS_", "LSSC_", "FAKE_", "TOY_"))}
        self.env.update(PATH=f"{bin_dir}{os.pathsep}{self.env['PATH']}", FAKE_CALLS=str(self.calls_file),
                        SLURM_JOB_ID=JOB_ID, LSSC_CMD="toy", TOY_NTASKS="16", TOY_SLEEP_S="0")

    def config(self, **pipeline):
        path = self.dir / "toy.yaml"
        path.write_text(yaml.safe_dump({"output_dir": str(self.dir / "out"),
                                        "pipeline": {"checkpoint_interval": 1, **pipeline}}))
        return path

    def calls(self):
        return self.calls_file.read_text().splitlines() if self.calls_file.exists() else []

    def checkpoints(self):
        return list((self.dir / "out" / "checkpoints" / "toy" / "tasks").glob("*.npz"))

    def output(self):
        return np.load(self.dir / "out" / "toy.npy")

    def start(self, script, *args, **env):
        """Start ``bash jobs/SCRIPT args`` in its own session (as a batch shell would be)."""
        return subprocess.Popen(["bash", str(JOBS / script), *map(str, args)], env={**self.env, **env},
                                cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def run(self, script, *args, timeout=60, **env):
        job = self.start(script, *args, **env)
        try:
            out, err = job.communicate(timeout=timeout)
        finally:
            kill_session(job)
        return subprocess.CompletedProcess(job.args, job.returncode, out, err)

    def wait_until(self, condition, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)


def kill_session(job):
    """Leave no process of a failed test behind (the launcher has a process group of its own)."""
    if job.poll() is None:
        for process in psutil.Process(job.pid).children(recursive=True):
            process.kill()
        job.kill()
        job.wait()


@pytest.fixture
def cluster(tmp_path):
    return Cluster(tmp_path)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    checked = subprocess.run(["bash", "-n", str(JOBS / script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck():
    paths = [f"jobs/{script}" for script in SCRIPTS]
    checked = subprocess.run(["shellcheck", "-x", *paths], cwd=REPO, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_slurm_usr1_checkpoints_requeues_and_resubmission_finishes(cluster):
    config = cluster.config()
    job = cluster.start("slurm_run.sh", config, TOY_SLEEP_S="0.2")
    try:
        cluster.wait_until(lambda: len(cluster.checkpoints()) >= 2, "2 checkpoints")
        os.kill(job.pid, signal.SIGUSR1)  # --signal=B:USR1@120 signals the batch shell only
        _, err = job.communicate(timeout=60)
    finally:
        kill_session(job)
    assert job.returncode == 0, err
    assert "stopped at a task boundary (signal SIGUSR1)" in err
    assert "slurm_run.sh: exit code 75" in err
    assert cluster.calls() == [f"squeue -h -j {JOB_ID} -o %e", f"srun --cpu-bind=cores toy {config}",
                               f"scontrol requeue {JOB_ID}"]
    assert not (cluster.dir / "out" / "toy.npy").exists()
    done_before = len(cluster.checkpoints())
    assert 2 <= done_before < 16

    rerun = cluster.run("slurm_run.sh", config, SLURM_RESTART_COUNT="1")
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} of 16 tasks already done" in rerun.stderr
    assert not [call for call in cluster.calls() if call.startswith("scontrol")][1:], "requeued again"
    np.testing.assert_array_equal(cluster.output(), expected_output(16))


def test_slurm_end_time_from_squeue_stops_the_job_which_is_requeued(cluster):
    # The ranks keep twice their longest task, at least 5 s, in reserve: with the end 7 s away they
    # stop after at most a few tasks, by themselves.
    done = cluster.run("slurm_run.sh", cluster.config(), TOY_SLEEP_S="0.3", FAKE_END_IN_S="7")
    assert done.returncode == 0, done.stderr
    assert "stopped at a task boundary (wall-time budget" in done.stderr
    assert cluster.calls()[-1] == f"scontrol requeue {JOB_ID}"


def test_slurm_failure_is_not_requeued(cluster):
    failed = cluster.run("slurm_run.sh", cluster.config(), LSSC_CMD="fail2")
    assert failed.returncode == 2, failed.stderr
    assert f"srun --cpu-bind=cores fail2 {cluster.dir / 'toy.yaml'}" in cluster.calls()
    assert not [call for call in cluster.calls() if call.startswith("scontrol")]


def test_slurm_sigterm_checkpoints_without_requeue(cluster):
    """scancel, preemption, hard limit: the launcher gets SIGUSR1 (mpiexec would answer SIGTERM with a
    kill and exit 1), the job ends with 75 and is not requeued."""
    job = cluster.start("slurm_run.sh", cluster.config(), LSSC_CMD="stoppable", LSSC_LAUNCHER="none")
    try:
        cluster.wait_until(lambda: "ready" in cluster.calls(), "the command to start")
        os.kill(job.pid, signal.SIGTERM)
        _, err = job.communicate(timeout=30)
    finally:
        kill_session(job)
    assert job.returncode == 75, err
    assert "got USR1" in cluster.calls()
    assert not [call for call in cluster.calls() if call.startswith("scontrol")]


def test_slurm_usr1_that_kills_the_ranks_still_requeues(cluster):
    """A rank killed by the forwarded SIGUSR1 (start-up, between stages) loses nothing: requeue."""
    job = cluster.start("slurm_run.sh", cluster.config(), LSSC_CMD="unprepared", LSSC_LAUNCHER="none")
    try:
        cluster.wait_until(lambda: "ready" in cluster.calls(), "the command to start")
        os.kill(job.pid, signal.SIGUSR1)
        _, err = job.communicate(timeout=30)
    finally:
        kill_session(job)
    assert job.returncode == 0, err
    assert "exit code 138" in err
    assert cluster.calls()[-1] == f"scontrol requeue {JOB_ID}"


def test_slurm_usr1_sent_to_the_ranks_directly_still_requeues(cluster):
    """`scancel --signal=USR1` (no --batch) signals srun's ranks, not the batch shell: a rank still
    starting dies of it (srun exits 138), which loses nothing either: requeue."""
    job = cluster.start("slurm_run.sh", cluster.config(), LSSC_CMD="unprepared", LSSC_LAUNCHER="none")
    try:
        cluster.wait_until(lambda: "ready" in cluster.calls(), "the command to start")
        for process in psutil.Process(job.pid).children(recursive=True):
            process.send_signal(signal.SIGUSR1)
        _, err = job.communicate(timeout=30)
    finally:
        kill_session(job)
    assert job.returncode == 0, err
    assert "exit code 138" in err and "SIGUSR1 received" not in err
    assert cluster.calls()[-1] == f"scontrol requeue {JOB_ID}"


def test_slurm_array_renders_the_seed_config_and_runs_it(cluster):
    template = cluster.dir / "family.yaml"
    template.write_text(f"output_dir: {cluster.dir}/runs/s{{seed}}\nseed: {{seed}}\n"
                        "pipeline: {checkpoint_interval: 1}\n")
    done = cluster.run("slurm_array.sh", template, "--stages", "kappa", SLURM_ARRAY_TASK_ID="3",
                       LSSC_SEED_OFFSET="100", LSSC_CMD="record", LSSC_LAUNCHER="none")
    assert done.returncode == 0, done.stderr
    assert cluster.calls()[-1] == "record generated_configs/family_s103.yaml --stages kappa"
    rendered = ProcessingConfig.from_yaml(cluster.dir / "generated_configs" / "family_s103.yaml")
    assert (rendered.seed, rendered.output_dir) == (103, f"{cluster.dir}/runs/s103")


@pytest.mark.parametrize("script, args, env, message", [
    ("slurm_run.sh", ["missing.yaml"], {}, "CONFIG: 'missing.yaml' is not a readable file"),
    ("local.sh", ["toy.yaml", "--restart"], {}, "--restart: not allowed"),
    ("local.sh", ["toy.yaml"], {"NP": "two"}, "NP: expected a positive integer"),
    ("slurm_array.sh", ["toy.yaml"], {"SLURM_ARRAY_TASK_ID": "1"}, "must contain {seed}"),
    ("slurm_array.sh", ["toy.yaml"], {}, "SLURM_ARRAY_TASK_ID: expected an array index"),
])
def test_bad_invocations_exit_2_without_launching(cluster, script, args, env, message):
    cluster.config()
    refused = cluster.run(script, *args, **env)
    assert refused.returncode == 2
    assert message in refused.stderr
    assert not cluster.calls()


def test_local_reruns_after_75_until_done(cluster):
    # Each run stops by itself once less than 5 s of its 6 s budget is left (after 2-3 tasks per rank),
    # so 8 tasks take 2 runs (3 when the machine is slow).
    config = cluster.config(wall_time_budget_s=6.0)
    done = cluster.run("local.sh", config, TOY_NTASKS="8", TOY_SLEEP_S="0.4")
    assert done.returncode == 0, done.stderr
    runs = done.stderr.count("local.sh: running: mpiexec -n 2 ")
    assert runs >= 2
    assert "stopped at a task boundary (wall-time budget" in done.stderr
    assert "checkpointed in run 1 (of at most 20): the job runs again" in done.stderr
    np.testing.assert_array_equal(cluster.output(), expected_output(8))


def test_local_gives_up_after_max_attempts(cluster):
    config = cluster.config()
    gave_up = cluster.run("local.sh", config, "--stages", "kappa", LSSC_CMD="always75",
                          LSSC_LAUNCHER="none", LSSC_MAX_ATTEMPTS="3")
    assert gave_up.returncode == 75
    assert cluster.calls() == [f"always75 {config} --stages kappa"] * 3
    assert "run 3 was the last of LSSC_MAX_ATTEMPTS=3" in gave_up.stderr


def test_local_other_exit_codes_end_the_loop(cluster):
    config = cluster.config()
    failed = cluster.run("local.sh", config, LSSC_CMD="false", LSSC_LAUNCHER="none")
    assert failed.returncode == 1
    assert failed.stderr.count("local.sh: running: false") == 1


def test_pbs_timer_signals_before_walltime_and_job_resubmits_itself(cluster):
    config = cluster.config()
    # Walltime 3 s, margin 2 s: the script's own timer sends it SIGUSR1 after 1 s.
    done = cluster.run("pbs_run.sh", CONFIG=config.name, LSSC_ARGS="--stages kappa", PBS_WALLTIME="3",
                       PBS_O_WORKDIR=str(cluster.dir), LSSC_SIGNAL_MARGIN_S="2", LSSC_CMD="stoppable",
                       LSSC_LAUNCHER="none", LSSC_ATTEMPT="4")
    assert done.returncode == 0, done.stderr
    calls = cluster.calls()
    assert "got USR1" in calls
    assert calls[-1] == (f"qsub -v CONFIG={config},LSSC_ATTEMPT=5,LSSC_CMD=stoppable,LSSC_LAUNCHER=none,"
                         f"LSSC_SIGNAL_MARGIN_S=2,LSSC_ARGS=--stages kappa {JOBS / 'pbs_run.sh'}")
