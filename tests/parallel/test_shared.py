"""Node-shared arrays (lensing_ssc.parallel.shared). The unmarked tests run in a plain one-rank process;
the ``mpi`` ones under

    mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/parallel/test_shared.py

where both ranks are on one node and share one window (they also pass on one rank).
"""
import os

import numpy as np
import psutil
import pytest

from lensing_ssc.core.errors import CheckpointedExit, InputError
from lensing_ssc.parallel import get_comm, is_collective, mark_collective, node_shared_array, shared

# A rank stuck in an MPI call never returns to Python, so only the thread method ends a hang (it exits the
# process, and mpiexec then ends the job).
pytestmark = pytest.mark.timeout(30, method="thread")

SHAPE = (3, 1000)
MIB = 2 ** 20


def expected_values(shape=SHAPE, dtype=np.float64):
    return (np.arange(int(np.prod(shape))).reshape(shape) * 0.5).astype(dtype)


def filler(calls, shape=SHAPE, dtype=np.float64):
    """A fill function that records its calls and writes ``expected_values``."""
    def fill(out):
        calls.append(out.shape)
        out[...] = expected_values(shape, dtype)
    return fill


def raising_fill(out):
    raise InputError("kappa_zs1.0_s7.fits: cannot read FITS map (truncated)")


# ------------------------------------------------------------------------------------------------
# One rank (no mpiexec): a plain numpy array, no window.

def test_one_rank_gets_a_plain_read_only_array():
    calls = []
    with node_shared_array(get_comm(), SHAPE, np.float32, filler(calls, dtype=np.float32)) as held:
        assert not held.window
        assert held.local_nbytes == held.array.nbytes == 3 * 1000 * 4
        assert held.array.dtype == np.float32 and held.array.shape == SHAPE
        np.testing.assert_array_equal(held.array, expected_values(dtype=np.float32))
        with pytest.raises(ValueError, match="read-only"):
            held.array[0, 0] = 1.0
    assert calls == [SHAPE]


def test_one_rank_not_needed_reads_nothing():
    calls = []
    with node_shared_array(get_comm(), SHAPE, np.float64, filler(calls), needed=False) as held:
        assert held.array is None and held.local_nbytes == 0
    assert calls == []


def test_one_rank_fill_error_is_raised_marked_collective():
    with pytest.raises(InputError, match="truncated") as caught:
        with node_shared_array(get_comm(), SHAPE, np.float64, raising_fill):
            pytest.fail("the block must not run when the fill failed")
    assert is_collective(caught.value)


# ------------------------------------------------------------------------------------------------
# Under mpiexec: one window per node.

@pytest.mark.mpi
def test_every_rank_sees_the_data_of_one_filling_rank_per_node():
    comm = get_comm()
    calls = []
    with node_shared_array(comm, SHAPE, np.float64, filler(calls)) as held:
        np.testing.assert_array_equal(held.array, expected_values())
        assert not held.array.flags.writeable
        fills = comm.allgather(len(calls))
        window_bytes = comm.allgather(held.local_nbytes)
        assert comm.allgather(held.window) == [comm.size > 1] * comm.size
        comm.barrier()
    assert sorted(fills) == [0] * (comm.size - 1) + [1]  # the ranks of this test share one node
    nbytes = expected_values().nbytes
    assert sorted(window_bytes) == [0] * (comm.size - 1) + [nbytes]  # only the filler's window has memory


@pytest.mark.mpi
def test_one_rank_needing_the_array_is_enough_for_the_node():
    comm = get_comm()
    calls = []
    needed = comm.rank == comm.size - 1
    with node_shared_array(comm, SHAPE, np.float64, filler(calls), needed=needed) as held:
        np.testing.assert_array_equal(held.array, expected_values())
    assert sum(comm.allgather(len(calls))) == 1

    with node_shared_array(comm, SHAPE, np.float64, filler(calls), needed=False) as held:
        assert held.array is None and held.local_nbytes == 0
    assert sum(comm.allgather(len(calls))) == 1  # nobody needed it: not read again


@pytest.mark.mpi
def test_fill_error_on_the_filling_rank_is_raised_on_every_rank():
    comm = get_comm()
    with pytest.raises(InputError, match="truncated") as caught:
        with node_shared_array(comm, SHAPE, np.float64, raising_fill):
            pytest.fail("the block must not run when the fill failed")
    assert is_collective(caught.value)
    comm.barrier()  # every rank got here: nobody is left waiting
    calls = []
    with node_shared_array(comm, SHAPE, np.float64, filler(calls)) as held:  # the next map still works
        np.testing.assert_array_equal(held.array, expected_values())


@pytest.mark.mpi
def test_windows_are_freed_after_each_block_also_after_a_collective_exception():
    """Six 64 MiB arrays in turn, every other block left by a collective exception (as a stop at a task
    boundary leaves the runner): the address space of no rank keeps growing."""
    comm = get_comm()
    process = psutil.Process()
    shape = (8 * MIB,)  # float64: 64 MiB

    def fill(out):
        out[:] = 1.0

    before = process.memory_info().vms
    for turn in range(6):
        if turn % 2:
            with pytest.raises(CheckpointedExit):
                with node_shared_array(comm, shape, np.float64, fill) as held:
                    assert held.array[-1] == 1.0
                    raise mark_collective(CheckpointedExit("analyze: stopped at a task boundary"))
        else:
            with node_shared_array(comm, shape, np.float64, fill) as held:
                assert held.array[-1] == 1.0
    del held  # one rank: a plain array, alive while referenced (a window is unmapped at the block's end)
    grown_mib = (process.memory_info().vms - before) / MIB
    assert grown_mib < 64, f"address space grew by {grown_mib:.0f} MiB over 6 arrays of 64 MiB"


@pytest.mark.mpi(min_size=2)
@pytest.mark.skipif(not os.path.isdir(shared.SHM_DIR), reason="no /dev/shm on this system")
def test_a_window_larger_than_the_free_shared_memory_is_refused_on_every_rank():
    """Instead of SIGBUS on the filling rank when /dev/shm runs full while it writes."""
    comm = get_comm()
    free = shared.shutil.disk_usage(shared.SHM_DIR).free
    calls = []
    with pytest.raises(MemoryError, match=r"kappa_zs1.0_s7.fits: a shared-memory window of .* GiB does not fit in "
                                          r"/dev/shm \(.* GiB free on this node\)") as caught:
        with node_shared_array(comm, (free // 8 + 1,), np.float64, filler(calls), what="kappa_zs1.0_s7.fits"):
            pytest.fail("the block must not run")
    assert is_collective(caught.value) and calls == []
    comm.barrier()
