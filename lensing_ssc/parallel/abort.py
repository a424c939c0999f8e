"""One rank's uncaught exception ends the whole MPI job at once instead of hanging the others."""
from __future__ import annotations

import contextlib
import logging
import sys
import traceback

from lensing_ssc.parallel.comm import Comm, is_collective

log = logging.getLogger("lensing_ssc.parallel")


def _report_and_abort(comm: Comm, exc: BaseException, code: int) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(f"[rank {comm.rank}/{comm.size}] fatal: {type(exc).__name__}: {exc}\n")
    log.debug("[rank %d] traceback:\n%s", comm.rank, text)
    sys.stderr.flush()
    comm.abort(code)


def install_abort_hook(comm: Comm, code_for=lambda exc: 1) -> None:
    """Make an uncaught exception on any rank of a multi-rank job call ``MPI_Abort``."""
    if comm.size == 1:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if not is_collective(exc):
            _report_and_abort(comm, exc, code_for(exc))

    sys.excepthook = hook


@contextlib.contextmanager
def abort_on_exception(comm: Comm, code_for=lambda exc: 1):
    """Run a block; on a multi-rank job an exception logs its rank and aborts every rank.

    Exceptions marked collective (raised on all ranks together, such as a config error broadcast
    from rank 0, see :func:`~lensing_ssc.parallel.comm.mark_collective`) propagate normally so every
    rank can exit cleanly with the same code.
    """
    try:
        yield
    except BaseException as exc:  # noqa: B902 - every other failure must end the whole job
        if comm.size > 1 and not is_collective(exc) and not isinstance(exc, SystemExit):
            _report_and_abort(comm, exc, code_for(exc))
        raise
