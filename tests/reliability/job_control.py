"""Launching ``lensing-ssc`` jobs (plain python on one rank, mpiexec above) and interrupting them from outside.

Output goes to files (a chatty job never blocks on a full pipe); a job that outlives its timeout is
killed with all its processes and the test fails, so no test can hang.
"""
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from conftest import REPO, launch_command, mpi_environment

DRIVER = Path(__file__).resolve().with_name("driver.py")


@dataclass
class Finished:
    """A job that ended: launcher exit code (negative: killed by that signal) and output."""

    returncode: int
    stdout: str
    stderr: str


class Job:
    """``python args...`` on ``nranks`` ranks, started at once; stdout/stderr in ``log_dir/NN.out|err``."""

    def __init__(self, args, nranks, log_dir, env=None):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        number = len(list(log_dir.glob("*.err")))
        self.out_path, self.err_path = log_dir / f"{number:02d}.out", log_dir / f"{number:02d}.err"
        self.nranks = nranks
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.began = time.monotonic()
            self.process = subprocess.Popen(launch_command(args, nranks), env={**mpi_environment(), **(env or {})},
                                            cwd=REPO, stdout=out, stderr=err)

    def running(self) -> bool:
        return self.process.poll() is None

    def _processes(self):
        try:
            parent = psutil.Process(self.process.pid)
            return parent, parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return None, []

    def ranks(self):
        """The python rank processes (the launched process itself on one rank)."""
        parent, children = self._processes()
        if self.nranks == 1:
            return [parent] if parent is not None else []
        return [p for p in children if _is_python(p)]

    def signal_ranks(self, signum, ranks=None) -> None:
        for process in self.ranks() if ranks is None else ranks:
            try:
                process.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    def signal_launcher(self, signum) -> None:
        if self.running():
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL every process of the job (ranks first, then the launcher)."""
        parent, children = self._processes()
        for process in children + ([parent] if parent is not None else []):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass

    def wait(self, timeout) -> Finished:
        """Wait for the end of the job; if it runs past ``timeout`` seconds, kill it and fail."""
        try:
            self.process.wait(timeout=max(timeout - (time.monotonic() - self.began), 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait()
            raise AssertionError(f"job did not end within {timeout} s (killed); stderr:\n{self.err_path.read_text()}")
        return Finished(self.process.returncode, self.out_path.read_text(), self.err_path.read_text())


def _is_python(process) -> bool:
    try:
        return "python" in process.name()
    except psutil.NoSuchProcess:
        return False


def run_job(args, nranks, log_dir, timeout=120, env=None) -> Finished:
    return Job(args, nranks, log_dir, env).wait(timeout)


def driver(*cli_args):
    """argv (after python) of the CLI through tests/reliability/driver.py."""
    return [DRIVER, *cli_args]
