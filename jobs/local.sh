#!/bin/bash
# lensing_ssc on a workstation, rerun while it checkpoints:
#
#     jobs/local.sh CONFIG.yaml [lensing-ssc run options]        # NP=4 jobs/local.sh ... for 4 ranks
#
# Runs `mpiexec -n ${NP:-2} lensing-ssc run CONFIG [options]`. When that exits 75 (checkpointed, e.g.
# because wall_time_budget_s in the config was spent) it runs it again, resuming from the checkpoints,
# up to LSSC_MAX_ATTEMPTS runs in all (default 20); then it exits 75. Ctrl-C or SIGTERM makes the ranks
# checkpoint and exit 75 without a rerun; SIGUSR1 makes them checkpoint, then the loop resumes them.
# Any other exit code ends the loop and is the script's exit code.
#
# Environment: NP (default 2), LSSC_CMD, LSSC_LAUNCHER (default mpiexec, unbound, so that NP may exceed
# the cores of a laptop; LSSC_LAUNCHER="mpiexec --bind-to core" pins one rank per core when NP <= cores;
# "none" for one rank without MPI), LSSC_MAX_ATTEMPTS: see common.sh.
set -uo pipefail

LSSC_SCRIPT=local.sh
# shellcheck source=jobs/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" || exit 2

NP=${NP:-2}
lssc_check_args "$@"
lssc_set_launcher mpiexec

attempt=1
while :; do
    lssc_run "$@"
    lssc_should_rerun "$attempt" || break
    attempt=$((attempt + 1))
done
exit "$LSSC_STATUS"
