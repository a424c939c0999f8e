"""Agreeing on a stop request across ranks without forcing them into lock-step.

A rank that sees a stop request (a signal, its wall-time budget) tells the others with small
point-to-point messages; every rank polls for them at its task boundaries (``should_stop``), so
ranks stop within one task of each other. ``finish`` is the one collective: every rank calls it once,
after its task loop, and learns whether any rank stopped early.
"""
from __future__ import annotations

from mpi4py import MPI

from lensing_ssc.parallel.comm import Comm

STOP_TAG = 7275


class StopAgreement:
    """Propagates a local stop request to all ranks (non-blocking), then agrees collectively."""

    def __init__(self, comm: Comm):
        self.comm = comm
        self._requested = False
        self._announced = False
        self._received_from = set()
        self._send_requests = []

    def request(self) -> None:
        """Ask for a stop (safe to call from a signal handler: it only sets a flag)."""
        self._requested = True

    def should_stop(self) -> bool:
        """Poll at a task boundary: True if this or any other rank asked to stop."""
        if self._requested and not self._announced:
            self._announce()
        status = MPI.Status()
        while self.comm.size > 1 and self.comm.mpi.Iprobe(source=MPI.ANY_SOURCE, tag=STOP_TAG, status=status):
            source = status.Get_source()
            self.comm.mpi.recv(source=source, tag=STOP_TAG)
            self._received_from.add(source)
            self._requested = True
            self._announced = True  # the stop is already spreading; no need to echo it
        return self._requested

    def _announce(self) -> None:
        self._announced = True
        for other in range(self.comm.size):
            if other != self.comm.rank:
                self._send_requests.append(self.comm.mpi.isend(True, dest=other, tag=STOP_TAG))

    def finish(self) -> bool:
        """Collective: True on every rank if any rank stopped early. Drains all stop messages."""
        self.should_stop()
        announced_by_me = bool(self._send_requests)
        announcers = self.comm.allgather(announced_by_me)
        for source, announced in enumerate(announcers):
            if announced and source != self.comm.rank and source not in self._received_from:
                self.comm.mpi.recv(source=source, tag=STOP_TAG)
                self._received_from.add(source)
        MPI.Request.Waitall(self._send_requests)
        self._send_requests = []
        return any(announcers) or self._requested
