"""Everything MPI in lensing_ssc lives here; nothing in this package knows about lensing.

* :mod:`.comm`   -- COMM_WORLD with or without mpiexec, rank-0-computes-then-broadcasts
* :mod:`.tasks`  -- splitting task lists by cost into contiguous rank ranges
* :mod:`.reduce` -- chunked reductions (sum, bitwise or) for arrays beyond the 2**31 MPI count limit
* :mod:`.abort`  -- one rank's exception ends the whole job (log with rank, then Abort)
* :mod:`.stop`   -- agreeing on a stop (signal, wall-time budget) at task boundaries
* :mod:`.shared` -- read-only arrays held once per node (MPI-3 shared-memory windows)
"""
from lensing_ssc.parallel.comm import Comm, get_comm, is_collective, mark_collective, raise_together, root_then_bcast
from lensing_ssc.parallel.tasks import split_by_cost
from lensing_ssc.parallel.reduce import allreduce_or, allreduce_sum, reduce_sum_to_root
from lensing_ssc.parallel.abort import abort_on_exception, install_abort_hook
from lensing_ssc.parallel.stop import StopAgreement
from lensing_ssc.parallel.shared import NodeSharedArray, node_shared_array

__all__ = ["Comm", "get_comm", "is_collective", "mark_collective", "raise_together", "root_then_bcast", "split_by_cost",
           "allreduce_or", "allreduce_sum", "reduce_sum_to_root",
           "abort_on_exception", "install_abort_hook", "StopAgreement", "NodeSharedArray", "node_shared_array"]
