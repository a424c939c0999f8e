"""Placement: ``mpiexec --bind-to core`` (the PBS script's default, docs/clusters.md "Placement") gives
each rank a core of its own, and a rank with one core runs the stages without read-ahead threads."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, mpi_environment

REPORT = """
import json, os
from mpi4py import MPI
from lensing_ssc.io.prefetch import has_spare_core
print(json.dumps({"rank": MPI.COMM_WORLD.rank, "cores": sorted(os.sched_getaffinity(0)),
                  "spare_core": has_spare_core()}), flush=True)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="binding 2 ranks needs 2 cores")
def test_bind_to_core_pins_each_rank_to_its_own_core():
    done = subprocess.run(["mpiexec", "--bind-to", "core", "-n", "2", sys.executable, "-c", REPORT],
                          env=mpi_environment(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ranks = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
                   key=lambda row: row["rank"])
    assert [len(row["cores"]) for row in ranks] == [1, 1]
    assert ranks[0]["cores"] != ranks[1]["cores"]
    assert [row["spare_core"] for row in ranks] == [False, False]

