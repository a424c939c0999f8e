"""The Slurm job scripts of jobs/ on a real one-node Slurm: signal, checkpoint, requeue, finish.

Run by ``make test-slurm`` (part of ``make test``), which starts the local Slurm with
``scripts/local_slurm.sh start`` and sets LSSC_SLURM_TESTS=1; skipped otherwise. Each case submits
``jobs/slurm_run.sh`` or ``jobs/slurm_array.sh`` unchanged (sbatch options set only the task count, the
log file and, in one case, the time limit) on the tiny demo-like chain of tests/reliability/chain.py,
has it stop once (a signal, or its time limit), checks that every rank checkpointed, that the script
requeued the job (``Restarts=1``) and that the resumed run completed, and compares the final outputs
byte for byte with the uninterrupted ``reference`` run (tests/conftest.py; outputs do not depend on the
rank count).

The command is the CLI through tests/reliability/driver.py, whose LSSC_TEST_COMMIT_DELAY_S makes every
atomic commit last that long: the tasks then last long enough for a signal sent after the first
checkpoint to arrive mid-stage, which is how the cases trigger their interruption (no fixed sleeps). A
requeued job waits about 2 minutes (its BeginTime) before Slurm starts it again; the tests release it
a few seconds later with ``scontrol update JobId=... StartTime=now+3``.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, mpi_environment

sys.path.insert(0, str(REPO / "tests" / "reliability"))  # chain.py, outputs.py (shared with those tests)
from chain import STAGES, write_chain_config  # noqa: E402
from outputs import output_differences  # noqa: E402

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("LSSC_SLURM_TESTS") != "1",
                       reason="needs a running Slurm: `make test-slurm` starts one (scripts/local_slurm.sh)"),
]

JOBS = REPO / "jobs"
DRIVER = REPO / "tests" / "reliability" / "driver.py"
CHAIN = ("preprocess", "kappa", "analyze")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
RUN_TIMEOUT_S = 240


def sh(*args, check=True):
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({done.returncode}): {done.stderr}")
    return done.stdout


class Job:
    """A submitted job (``ID`` or, for an array task, ``ID_INDEX``) and its log file."""

    def __init__(self, job_id, log):
        self.id, self.log = job_id, Path(log)

    def info(self):
        """Fields of ``scontrol show job`` (JobState, Reason, Restarts, ExitCode, ...)."""
        return dict(re.findall(r"(\w+)=(\S*)", sh("scontrol", "show", "job", "-o", self.id)))

    def text(self):
        return self.log.read_text() if self.log.exists() else ""

    def wait_until(self, condition, what, timeout=RUN_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                log_tail = sh("tail", "-n", "20", "/var/log/slurm/slurmctld.log", check=False)
                raise AssertionError(f"job {self.id}: timed out after {timeout} s waiting for {what}; "
                                     f"state {self.info()}\n--- job log:\n{self.text()}\n--- slurmctld:\n{log_tail}")
            time.sleep(0.2)

    def wait_for_checkpoint(self, output_dir, stage="preprocess"):
        """Until the job's ranks have checkpointed a first task of ``stage``: mid-stage from then on."""
        tasks = Path(output_dir) / STAGES[stage].checkpoints / "tasks"
        self.wait_until(lambda: any(tasks.glob("*.npz")), f"a first {stage} checkpoint in {tasks}")

    def release_requeued(self, **updates):
        """Wait until the script has requeued the job, then let it start again in 3 s, not after ~2 min.
        Not at once: slurmd refuses a job whose credential is no newer than the revocation of the
        previous run's ("Job credential revoked", to the second)."""
        self.wait_until(lambda: (self.info().get("JobState"), self.info().get("Reason")) == ("PENDING", "BeginTime"),
                        "the requeued job to wait for its BeginTime")
        sh("scontrol", "update", f"JobId={self.id}", "StartTime=now+3", *(f"{k}={v}" for k, v in updates.items()))

    def finish(self):
        """Wait for the end of the job; returns ``scontrol show job``'s fields."""
        self.wait_until(lambda: self.info().get("JobState") in FINISHED, "the end of the job")
        return self.info()


class Slurm:
    """Submits jobs with the environment of a test; cancels those still queued or running at the end."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.submitted = []
        self.env = {k: v for k, v in mpi_environment().items() if not k.startswith(("SLURM_", "LSSC_"))}
        self.env["LSSC_CMD"] = f"{sys.executable} {DRIVER} run"

    def submit(self, script, args, options, commit_delay_s, cwd=REPO, **env):
        """``sbatch --parsable OPTIONS jobs/SCRIPT ARGS``; the job id (the array's id for an array)."""
        command = ["sbatch", "--parsable", *options, str(JOBS / script), *map(str, args)]
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60,
                              env={**self.env, "LSSC_TEST_COMMIT_DELAY_S": str(commit_delay_s), **env})
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip().split(";")[0]
        self.submitted.append(job_id)
        return job_id

    def cancel_leftovers(self):
        for job_id in self.submitted:
            subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


@pytest.fixture
def slurm(tmp_path):
    cluster = Slurm(tmp_path)
    yield cluster
    cluster.cancel_leftovers()


def assert_stopped_and_resumed(job, info, stop_message):
    """The first run: the ranks stopped at a task boundary with their checkpoints, exit 75, requeue; the
    second run resumed from them on 2 ranks and completed."""
    log = job.text()
    first, _, second = log.partition("requeued job")
    assert re.search(stop_message, first), log
    assert "slurm_run.sh: exit code 75" in first, log
    assert "checkpointed in run 1 (of at most 20): the job runs again" in first, log
    assert re.search(r"\d+ of \d+ tasks already done \(checkpoints\), \d+ to do on 2 rank\(s\)", second), log
    assert "slurm_run.sh: exit code 0" in second, log
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0"), info


def assert_same_outputs(expected_dir, found_dir, stages=CHAIN):
    problems = output_differences(expected_dir, found_dir, stages)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("launcher, scancel", [
    # srun --mpi=pmix -n 2; scancel without --batch signals the ranks of the srun step directly.
    ({"LSSC_LAUNCHER": "srun --mpi=pmix", "NP": "2"}, ["scancel", "--signal=USR1"]),
    # Open MPI's mpirun (2 ranks from the allocation): not a step, so the signal goes to the batch shell,
    # as the time-limit warning does, and the shell forwards it to mpirun.
    ({"LSSC_LAUNCHER": "mpirun"}, ["scancel", "--batch", "--signal=USR1"]),
], ids=["srun-pmix", "mpirun"])
def test_usr1_mid_run_checkpoints_requeues_and_the_job_completes(slurm, reference, tmp_path, launcher, scancel):
    output = tmp_path / "run"
    config = reference.write_config(output)
    job_id = slurm.submit("slurm_run.sh", [config, "--stages", ",".join(CHAIN)],
                          ["--ntasks-per-node=2", f"--output={tmp_path}/job-%j.out"], commit_delay_s=0.3, **launcher)
    job = Job(job_id, tmp_path / f"job-{job_id}.out")
    job.wait_for_checkpoint(output)
    sh(*scancel, job.id)
    job.release_requeued()
    info = job.finish()
    assert_stopped_and_resumed(job, info,
                               r"stopped at a task boundary \(signal SIGUSR1\); \d+/10 tasks are checkpointed")
    assert_same_outputs(reference.directory, output)


def test_time_limit_warning_checkpoints_requeues_and_the_job_completes(slurm, reference, tmp_path):
    """--time=1 --signal=B:USR1@20: Slurm (checking time limits every 30 s) warns the batch shell 10 to
    40 s after the start; failing that, the ranks stop by themselves when less than twice a task (8 s)
    is left of the minute (SLURM_JOB_END_TIME from squeue). 6 tasks of 8 s per rank (one slowed ledger
    append each: the kappa tasks write their pixels into the maps, not into checkpoint files) outlast
    both, so the first run always stops; the test gives the requeued run a longer limit, so that it is
    the only stop."""
    output = tmp_path / "run"
    config = reference.workspace("kappa", output)
    job_id = slurm.submit("slurm_run.sh", [config, "--stages", "kappa"],
                          ["--ntasks-per-node=2", "--time=1", "--signal=B:USR1@20", f"--output={tmp_path}/job-%j.out"],
                          commit_delay_s=8.0)
    job = Job(job_id, tmp_path / f"job-{job_id}.out")
    job.release_requeued(TimeLimit=10)
    info = job.finish()
    assert_stopped_and_resumed(job, info, r"stopped at a task boundary \((signal SIGUSR1|wall-time budget)")
    assert_same_outputs(reference.directory, output, stages=("kappa",))


def test_job_array_over_two_seeds_requeues_only_the_interrupted_task(slurm, reference, tmp_path, cli):
    """--array=5-6: seed 5 is the reference's, seed 6 gets its own uninterrupted run. Each array task makes
    its own mock light cone. The task that starts first is interrupted mid-run and requeued alone."""
    stages = "mock," + ",".join(CHAIN)
    written = write_chain_config(tmp_path / "s{seed}", tmp_path / "s{seed}" / "usmesh", mock_enabled=True,
                                 mock={"seed": "{seed}"})
    template = tmp_path / "family.yaml"
    template.write_text(written.read_text().replace("'{seed}'", "{seed}"))  # an integer once rendered
    # Submitted from a directory of its own (the configs go to its generated_configs/), naming jobs/.
    array_id = slurm.submit("slurm_array.sh", [template, "--stages", stages],
                            ["--array=5-6", "--ntasks-per-node=2", f"--output={tmp_path}/job-%A_%a.out"],
                            commit_delay_s=0.3, cwd=tmp_path, LSSC_JOBS_DIR=str(JOBS))
    tasks = {seed: Job(f"{array_id}_{seed}", tmp_path / f"job-{array_id}_{seed}.out") for seed in (5, 6)}

    def first_checkpointed():
        return [seed for seed in tasks
                if any((tmp_path / f"s{seed}" / STAGES["preprocess"].checkpoints / "tasks").glob("*.npz"))]

    tasks[5].wait_until(first_checkpointed, "a first preprocess checkpoint of an array task")
    stopped = first_checkpointed()[0]
    sh("scancel", "--signal=USR1", tasks[stopped].id)
    tasks[stopped].release_requeued()
    infos = {seed: job.finish() for seed, job in tasks.items()}

    assert_stopped_and_resumed(tasks[stopped], infos[stopped], r"stopped at a task boundary \(signal SIGUSR1\)")
    other = 11 - stopped
    assert (infos[other]["JobState"], infos[other]["Restarts"]) == ("COMPLETED", "0"), infos[other]
    assert f"seed {other}, config generated_configs/family_s{other}.yaml" in tasks[other].text()
    assert_same_outputs(reference.directory, tmp_path / "s5")
    seed6 = write_chain_config(tmp_path / "reference_s6", tmp_path / "reference_s6" / "usmesh", mock_enabled=True,
                               mock={"seed": 6})
    done = cli(["run", seed6, "--stages", stages], timeout=180)
    assert done.returncode == 0, done.stderr
    assert_same_outputs(tmp_path / "reference_s6", tmp_path / "s6")
