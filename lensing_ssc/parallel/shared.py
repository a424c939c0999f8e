"""Read-only arrays held once per node in MPI-3 shared memory instead of once per rank.

:func:`node_shared_array` is collective over a communicator (usually ``get_comm()``). The ranks of each
node (``Split_type(COMM_TYPE_SHARED)``) share one window from ``MPI.Win.Allocate_shared``: node-local
rank 0 allocates the whole array and fills it, the other ranks allocate 0 bytes and map rank 0's
segment (``Shared_query``). Every rank then sees the same read-only array until the block ends, when
the window is freed collectively. A node with one rank (and a plain one-rank run without mpiexec) uses
an ordinary numpy array and no window.

Memory consistency follows the MPI-3 shared-memory pattern: the window is locked for the whole block
(``Lock_all(MODE_NOCHECK)``), the filler calls ``Win.Sync`` after writing, an ``allgather`` over the
whole communicator orders the fill before every read (and carries the fill's errors, as
:func:`~lensing_ssc.parallel.comm.root_then_bcast` does for rank 0), and the readers call ``Win.Sync``
before reading.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from mpi4py import MPI

from lensing_ssc.parallel.comm import Comm, is_collective, raise_together


class NodeSharedArray:
    """What :func:`node_shared_array` yields: the array and how it is held on this rank.

    ``array``: the filled, read-only array (shape and dtype as asked), or None when no rank of this node
    asked for it (``needed`` false on all of them). ``window``: True when it lives in a shared window.
    ``local_nbytes``: the bytes this rank allocated (the size of its part of the window: the whole array on
    the node's filling rank, 0 on the ranks that map its segment; 0 when the array was not needed).
    """

    def __init__(self, array: Optional[np.ndarray], window: bool, local_nbytes: int):
        self.array = array
        self.window = window
        self.local_nbytes = local_nbytes


def _node_comm(comm: Comm) -> Comm:
    """The ranks of ``comm`` that share this rank's memory (collective; free with ``.mpi.Free()``)."""
    return Comm(comm.mpi.Split_type(MPI.COMM_TYPE_SHARED))


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


@contextlib.contextmanager
def node_shared_array(comm: Comm, shape: Sequence[int], dtype, fill: Callable[[np.ndarray], None],
                      needed: bool = True, what: str = "node-shared array") -> Iterator[NodeSharedArray]:
    """Allocate an array once per node, fill it on node-local rank 0, and share it read-only (collective).

    ``fill(out)`` writes every element of ``out`` (writable, ``shape``, ``dtype``, uninitialised); it runs
    on one rank per node. ``needed`` is this rank's wish for the array; a node allocates and fills it
    only when at least one of its ranks needs it, but every rank of ``comm`` must call this function.
    ``what`` names the array in error messages.

    If ``fill`` raises on any node, every rank of ``comm`` raises that exception (the first node's, marked
    collective) after the window is freed, so no rank is left waiting; so it is with a MemoryError when a
    window would not fit in the free space of /dev/shm, where MPI libraries keep shared-memory segments
    (a full /dev/shm would otherwise kill the filling rank with SIGBUS). The array must not be used after
    the block: its memory is unmapped there. A non-collective exception inside the block leaves the window
    to the process exit (the job is about to be aborted; a collective free would wait for ranks that
    never come).
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    node = _node_comm(comm) if comm.size > 1 else comm
    window = None
    try:
        needed_on_node = node.any(needed)
        use_window = needed_on_node and node.size > 1
        raise_together(comm, _shm_shortage(nbytes, what) if use_window and node.is_root else None)
        array = None
        if use_window:
            window = MPI.Win.Allocate_shared(nbytes if node.is_root else 0, dtype.itemsize, comm=node.mpi)
            window.Lock_all(MPI.MODE_NOCHECK)
            buffer, _ = window.Shared_query(0)
            array = np.ndarray(shape, dtype=dtype, buffer=buffer)
        elif needed_on_node:
            array = np.empty(shape, dtype=dtype)
        failure = None
        if needed_on_node and node.is_root:
            try:
                fill(array)
            except Exception as exc:  # carried to every rank of comm and raised there
                failure = exc
            if window is not None:
                window.Sync()
        raise_together(comm, failure)  # also the barrier between the fill and every read
        if window is not None and not node.is_root:
            window.Sync()
        owned = window.tomemory().nbytes if window is not None else (0 if array is None else array.nbytes)
        yield NodeSharedArray(None if array is None else _read_only(array), window is not None, owned)
    except BaseException as exc:
        if is_collective(exc):  # otherwise the window is left to the process exit: see the docstring
            _free(window, node, comm)
        raise
    _free(window, node, comm)


SHM_DIR = "/dev/shm"


def _shm_shortage(nbytes: int, what: str) -> Optional[MemoryError]:
    """A MemoryError when /dev/shm exists and has less than ``nbytes`` free, else None."""
    if not os.path.isdir(SHM_DIR):
        return None
    free = shutil.disk_usage(SHM_DIR).free
    if free >= nbytes:
        return None
    return MemoryError(f"{what}: a shared-memory window of {nbytes / 2 ** 30:.2f} GiB does not fit in {SHM_DIR} "
                       f"({free / 2 ** 30:.2f} GiB free on this node)")


def _free(window: Optional["MPI.Win"], node: Comm, comm: Comm) -> None:
    """Free the window and the node communicator (collective over the node)."""
    if window is not None:
        window.Unlock_all()
        window.Free()
    if node is not comm:
        node.mpi.Free()
