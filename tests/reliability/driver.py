"""``python tests/reliability/driver.py CLI-ARGS...``: the ``lensing-ssc`` CLI with three test hooks.

* Environment ``LSSC_TEST_COMMIT_DELAY_S=D``: every atomic file commit (checkpoint npz, sheet, kappa
  map, results file, JSON reports) sleeps D seconds with its ``*.inprogress`` file written and not yet
  renamed, and every ledger append D seconds before it writes: a slow shared filesystem. The stages then last long enough for a test to kill them at
  a random moment, and each commit lasts at least D, which bounds the run time from below. Outputs
  are unchanged.
* The statistic plugin ``fails_on_rank_1`` is registered (it runs only when ``analysis.statistics``
  names it): the patch mean on every rank, except that rank 1 raises at its second patch.
* Environment ``LSSC_TEST_REPORT_EXIT=1``: each rank prints ``rank R exit CODE`` on stdout before
  exiting, so a test sees every rank's exit code, not only the launcher's.
"""
import os
import sys
import time

import numpy as np

from lensing_ssc.cli import main
from lensing_ssc.io import atomic, results
from lensing_ssc.parallel import get_comm
from lensing_ssc.plugins import register_pipeline_plugin
from lensing_ssc.processing.checkpoint import CheckpointStore
from lensing_ssc.processing.steps import kappa_steps

COMMIT_DELAY_ENV = "LSSC_TEST_COMMIT_DELAY_S"
REPORT_EXIT_ENV = "LSSC_TEST_REPORT_EXIT"
FAILING_PLUGIN = "fails_on_rank_1"


class FailsOnRankOne:
    """Patch mean (shape (1,)); rank 1 raises RuntimeError at its second patch."""

    patches_seen = 0

    def process(self, data, config):
        FailsOnRankOne.patches_seen += 1
        if get_comm().rank == 1 and FailsOnRankOne.patches_seen == 2:
            raise RuntimeError("injected failure on rank 1")
        return {"mean": np.array([data.mean()])}


def slow_down_commits(delay_s: float) -> None:
    """Make lensing_ssc.io.atomic.commit sleep ``delay_s`` before its fsync and rename, and each ledger
    append (``CheckpointStore.flush``) before it writes."""
    original = atomic.commit

    def slow_commit(temporary, final):
        time.sleep(delay_s)
        original(temporary, final)

    atomic.commit = slow_commit   # used by atomic_output, write_json_atomic (checkpoints, maps, reports)
    results.commit = slow_commit  # imported by name by the results-file writer
    kappa_steps.commit = slow_commit  # and by the kappa stage, which renames its partial maps
    flush = CheckpointStore.flush

    def slow_flush(store):  # a ledger append is not a commit, but as slow on a slow filesystem
        if store._unsaved:
            time.sleep(delay_s)
        flush(store)

    CheckpointStore.flush = slow_flush


if __name__ == "__main__":  # registered here, so that importing the constants above changes nothing
    register_pipeline_plugin(FAILING_PLUGIN)(FailsOnRankOne)
    if float(os.environ.get(COMMIT_DELAY_ENV, "0")) > 0:
        slow_down_commits(float(os.environ[COMMIT_DELAY_ENV]))
    code = main(sys.argv[1:])
    if os.environ.get(REPORT_EXIT_ENV):
        print(f"rank {get_comm().rank} exit {code}", flush=True)
    sys.exit(code)
