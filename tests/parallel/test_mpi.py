"""MPI layer on the real COMM_WORLD. Run with

    mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/parallel/test_mpi.py

(they also pass on one rank). Without ``--with-mpi`` pytest-mpi skips them.
"""
import time

import numpy as np
import pytest
from mpi4py import MPI

from lensing_ssc.core.errors import ConfigError
from lensing_ssc.parallel import (StopAgreement, allreduce_or, allreduce_sum, get_comm, is_collective,
                                  raise_together, reduce_sum_to_root, root_then_bcast)
from lensing_ssc.parallel.stop import STOP_TAG

pytestmark = pytest.mark.mpi

SHAPES = [(23,), (5, 9)]  # 23 and 45 elements: not multiples of the chunk of 7
DTYPES = [np.int64, np.int32, np.float64, np.float32]


def rank_array(rank, shape, dtype):
    """The array rank ``rank`` contributes; any rank can rebuild any other rank's contribution."""
    rng = np.random.default_rng(1000 + rank)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-1000, 1000, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def expected_sum(size, shape, dtype):
    return sum(rank_array(r, shape, dtype).astype(np.float64) for r in range(size))


def assert_sum_equal(actual, expected, dtype):
    if np.issubdtype(dtype, np.integer):
        np.testing.assert_array_equal(actual, expected.astype(dtype))
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)


@pytest.mark.parametrize("max_elements", [7, 2 ** 30])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_allreduce_sum_chunked_equals_plain_sum(shape, dtype, max_elements):
    comm = get_comm()
    array = rank_array(comm.rank, shape, dtype)
    result = allreduce_sum(array, comm, max_elements=max_elements)
    assert result is array  # in place
    assert_sum_equal(array, expected_sum(comm.size, shape, dtype), dtype)


@pytest.mark.parametrize("max_elements", [7, 2 ** 30])
def test_allreduce_or_of_packed_bits_equals_numpy_or(max_elements):
    comm = get_comm()
    bits = [np.packbits(np.random.default_rng(50 + rank).random(181) < 0.2) for rank in range(comm.size)]
    array = bits[comm.rank].copy()
    assert allreduce_or(array, comm, max_elements=max_elements) is array  # in place
    np.testing.assert_array_equal(array, np.bitwise_or.reduce(np.stack(bits)))
    if comm.size > 1:
        assert not np.array_equal(array, bits[comm.rank])


def test_raise_together_raises_one_ranks_failure_everywhere():
    comm = get_comm()
    raise_together(comm, None)  # nobody failed: no exception
    failure = ConfigError(f"rank {comm.rank} failed") if comm.rank == comm.size - 1 else None
    with pytest.raises(ConfigError, match=f"rank {comm.size - 1} failed") as raised:
        raise_together(comm, failure)
    assert is_collective(raised.value)


@pytest.mark.parametrize("root_choice", ["first", "last"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reduce_sum_to_root_chunked_equals_plain_sum(shape, dtype, root_choice):
    comm = get_comm()
    root = 0 if root_choice == "first" else comm.size - 1
    array = rank_array(comm.rank, shape, dtype)
    reduce_sum_to_root(array, comm, root=root, max_elements=7)
    if comm.rank == root:
        assert_sum_equal(array, expected_sum(comm.size, shape, dtype), dtype)
    else:
        np.testing.assert_array_equal(array, rank_array(comm.rank, shape, dtype))


@pytest.mark.parametrize("reduction", [allreduce_sum, reduce_sum_to_root])
def test_non_contiguous_array_is_refused(reduction):
    """Every rank refuses before communicating (a reshape copy would silently drop the sum)."""
    comm = get_comm()
    transposed = np.ones((4, 6)).T
    with pytest.raises(ValueError, match="array: expected a C-contiguous array"):
        reduction(transposed, comm, max_elements=7)
    with pytest.raises(ValueError, match="C-contiguous"):
        reduction(np.ones(10)[::2], comm)


def test_root_then_bcast_gives_rank0_value_everywhere():
    comm = get_comm()
    calls = []

    def compute():
        calls.append(comm.rank)
        return {"rank": comm.rank, "values": [1, 2, 3]}

    assert root_then_bcast(comm, compute) == {"rank": 0, "values": [1, 2, 3]}
    assert calls == ([0] if comm.rank == 0 else [])


def test_root_then_bcast_raises_rank0_error_on_every_rank():
    comm = get_comm()

    def compute():
        raise ConfigError(["pipeline.batch_size: expected an integer >= 1, got 0"], "run.yaml")

    with pytest.raises(ConfigError) as caught:
        root_then_bcast(comm, compute)
    assert is_collective(caught.value)
    assert caught.value.problems == ["pipeline.batch_size: expected an integer >= 1, got 0"]
    assert caught.value.source == "run.yaml"
    comm.barrier()  # every rank got here: nobody is left waiting in the broadcast


def assert_no_stop_messages_pending(comm):
    comm.barrier()
    assert not comm.mpi.Iprobe(source=MPI.ANY_SOURCE, tag=STOP_TAG)
    follow_up = StopAgreement(comm)
    assert follow_up.should_stop() is False
    assert follow_up.finish() is False


def test_stop_requested_on_rank0_only_is_agreed_by_all():
    comm = get_comm()
    agreement = StopAgreement(comm)
    if comm.rank == 0:
        agreement.request()
        assert agreement.should_stop()
    assert agreement.finish() is True
    assert_no_stop_messages_pending(comm)


def test_stop_on_rank0_reaches_others_at_their_task_boundaries():
    comm = get_comm()
    agreement = StopAgreement(comm)
    if comm.rank == 0:
        agreement.request()
    deadline = time.monotonic() + 30
    while not agreement.should_stop():  # other ranks poll, as at task boundaries
        assert time.monotonic() < deadline, "stop request never arrived"
        time.sleep(0.001)
    assert agreement.finish() is True
    assert_no_stop_messages_pending(comm)


def test_stop_requested_without_polling_is_announced_by_finish():
    comm = get_comm()
    agreement = StopAgreement(comm)
    if comm.rank == comm.size - 1:
        agreement.request()  # never polled: finish must still tell everyone
    assert agreement.finish() is True
    assert_no_stop_messages_pending(comm)


def test_stop_requested_on_every_rank():
    comm = get_comm()
    agreement = StopAgreement(comm)
    agreement.request()
    assert agreement.should_stop()
    assert agreement.finish() is True
    assert_no_stop_messages_pending(comm)


def test_no_stop_request_means_no_stop():
    comm = get_comm()
    agreement = StopAgreement(comm)
    assert agreement.should_stop() is False
    assert agreement.finish() is False
    assert_no_stop_messages_pending(comm)


def test_comm_any_max_sum():
    comm = get_comm()
    assert comm.any(comm.rank == comm.size - 1) is True
    assert comm.any(False) is False
    assert comm.any(True) is True
    assert comm.max(comm.rank) == comm.size - 1
    assert comm.sum(comm.rank + 1) == comm.size * (comm.size + 1) // 2
    assert comm.allgather(comm.rank) == list(range(comm.size))
