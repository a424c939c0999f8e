"""The MPI communicator: COMM_WORLD under mpiexec/srun, a one-rank world when started plainly.

mpi4py initialises MPI as a singleton when the program was not started by a launcher, so the same code
runs on a laptop (one rank) and on a cluster.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from mpi4py import MPI


class Comm:
    """A thin wrapper over an mpi4py communicator with the few operations the pipelines use."""

    def __init__(self, mpi_comm: Optional["MPI.Comm"] = None):
        self.mpi = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        self.mpi.Barrier()

    def bcast(self, value: Any, root: int = 0) -> Any:
        return self.mpi.bcast(value, root=root)

    def gather(self, value: Any, root: int = 0):
        return self.mpi.gather(value, root=root)

    def allgather(self, value: Any):
        return self.mpi.allgather(value)

    def scatter(self, values, root: int = 0):
        return self.mpi.scatter(values, root=root)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one rank (collective)."""
        return bool(self.mpi.allreduce(bool(flag), op=MPI.LOR))

    def max(self, value):
        return self.mpi.allreduce(value, op=MPI.MAX)

    def sum(self, value):
        return self.mpi.allreduce(value, op=MPI.SUM)

    def abort(self, code: int) -> None:
        self.mpi.Abort(code)


_WORLD: Optional[Comm] = None


def get_comm() -> Comm:
    """The process-wide COMM_WORLD wrapper (created on first use)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = Comm()
    return _WORLD


class _RootFailure:
    """An exception raised on rank 0, carried to the other ranks so that all raise it together."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def root_then_bcast(comm: Comm, compute: Callable[[], Any]) -> Any:
    """Run ``compute()`` on rank 0 only and give its result to every rank (collective).

    If ``compute`` raises on rank 0, every rank raises the same exception (marked collective), so a
    bad config or input stops the job cleanly with one message instead of hanging the other ranks.
    """
    outcome = None
    if comm.is_root:
        try:
            outcome = compute()
        except Exception as exc:  # carried to all ranks and re-raised below
            outcome = _RootFailure(exc)
    outcome = comm.bcast(outcome)
    if isinstance(outcome, _RootFailure):
        raise mark_collective(outcome.exc)
    return outcome


def raise_together(comm: Comm, failure: Optional[BaseException]) -> None:
    """Every rank raises the first rank's failure, marked collective, when any rank has one (collective).

    A failing rank raises its own exception (with its traceback), the others the first one received."""
    outcomes = comm.allgather(failure) if comm.size > 1 else [failure]
    failures = [f for f in outcomes if f is not None]
    if failures:
        raise mark_collective(failure if failure is not None else failures[0])


def mark_collective(exc: BaseException) -> BaseException:
    """Mark an exception as raised on every rank together, so it needs no ``MPI_Abort``."""
    exc.collective = True
    return exc


def is_collective(exc: BaseException) -> bool:
    return bool(getattr(exc, "collective", False))
