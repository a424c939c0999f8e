"""Placement: ``mpiexec --bind-to core`` (the PBS script's default, docs/clusters.md "Placement") gives
each rank a core of its own, and a rank with one core runs the stages without read-ahead threads."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, mpi_environment

# Each rank writes its report to a file of its own: mpiexec forwards the ranks' stdout in pieces, and
# two lines printed at once once arrived glued together ('{...}{...}').
REPORT = """
import json, os, sys
from pathlib import Path
from mpi4py import MPI
from lensing_ssc.io.prefetch import has_spare_core
rank = MPI.COMM_WORLD.rank
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(
    {"rank": rank, "cores": sorted(os.sched_getaffinity(0)), "spare_core": has_spare_core()}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="binding 2 ranks needs 2 cores")
def test_bind_to_core_pins_each_rank_to_its_own_core(tmp_path):
    done = subprocess.run(["mpiexec", "--bind-to", "core", "-n", "2", sys.executable, "-c", REPORT, str(tmp_path)],
                          env=mpi_environment(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ranks = sorted((json.loads(path.read_text()) for path in tmp_path.glob("rank*.json")),
                   key=lambda row: row["rank"])
    assert [row["rank"] for row in ranks] == [0, 1]
    assert [len(row["cores"]) for row in ranks] == [1, 1]
    assert ranks[0]["cores"] != ranks[1]["cores"]
    assert [row["spare_core"] for row in ranks] == [False, False]

