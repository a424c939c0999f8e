"""Sum and bitwise-OR reductions of large numpy arrays, chunked below the 2**31-element MPI count limit."""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from lensing_ssc.parallel.comm import Comm

# 2**30 elements per message keeps every count and byte offset comfortably inside int32 limits for
# element types up to 8 bytes... and leaves headroom for implementations counting bytes in int64.
MAX_ELEMENTS_PER_MESSAGE = 2 ** 30


def _allreduce(array: np.ndarray, comm: Comm, op, max_elements: int) -> np.ndarray:
    """Element-wise reduction ``op`` over ranks, in place, in chunks of at most ``max_elements``."""
    if not array.flags.c_contiguous:  # reshape would copy, and the reduction would miss ``array``
        raise ValueError("array: expected a C-contiguous array")
    flat = array.reshape(-1)
    for start in range(0, flat.size, max_elements):
        comm.mpi.Allreduce(MPI.IN_PLACE, flat[start:start + max_elements], op=op)
    return array


def allreduce_sum(array: np.ndarray, comm: Comm, max_elements: int = MAX_ELEMENTS_PER_MESSAGE) -> np.ndarray:
    """Element-wise sum over ranks, in place, in chunks of at most ``max_elements`` (collective)."""
    return _allreduce(array, comm, MPI.SUM, max_elements)


def allreduce_or(array: np.ndarray, comm: Comm, max_elements: int = MAX_ELEMENTS_PER_MESSAGE) -> np.ndarray:
    """Element-wise bitwise OR over ranks of an integer array (e.g. packed bit maps), in place,
    chunked (collective)."""
    return _allreduce(array, comm, MPI.BOR, max_elements)


def reduce_sum_to_root(array: np.ndarray, comm: Comm, root: int = 0,
                       max_elements: int = MAX_ELEMENTS_PER_MESSAGE) -> np.ndarray:
    """Element-wise sum over ranks onto ``root`` (in place there), chunked (collective)."""
    if not array.flags.c_contiguous:  # reshape would copy, and the sum would miss ``array``
        raise ValueError("array: expected a C-contiguous array")
    flat = array.reshape(-1)
    for start in range(0, flat.size, max_elements):
        chunk = flat[start:start + max_elements]
        if comm.rank == root:
            comm.mpi.Reduce(MPI.IN_PLACE, chunk, op=MPI.SUM, root=root)
        else:
            comm.mpi.Reduce(chunk, None, op=MPI.SUM, root=root)
    return array
