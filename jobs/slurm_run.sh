#!/bin/bash
#SBATCH --job-name=lensing-ssc
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
#SBATCH --time=24:00:00
#SBATCH --output=lensing-ssc-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#
# One lensing_ssc run (one simulation) under Slurm, requeued until it is done:
#
#     cd /path/to/lensing_ssc && sbatch jobs/slurm_run.sh CONFIG.yaml [lensing-ssc run options]
#
# Edit the #SBATCH lines above for your site (account, partition, nodes, tasks, time). Submit from the
# repository root (or export LSSC_JOBS_DIR=/path/to/lensing_ssc/jobs): Slurm runs a copy of this file,
# so common.sh is looked up in $SLURM_SUBMIT_DIR/jobs. Load modules / activate the virtualenv before
# sbatch (the job inherits the environment) or at "Site set-up" below.
#
# Signals. --signal=B:USR1@120 sends SIGUSR1 to this batch shell only, 120 s before the time limit. The
# shell forwards it to srun (or mpirun), which passes it to every rank; the ranks checkpoint at the next
# task boundary and exit 75. (Without "B:", Slurm would signal the processes of the srun step directly
# and leave the shell unaware; it also would not reach an mpirun started by the shell.) The time limit
# also reaches the ranks through SLURM_JOB_END_TIME, set by recent Slurm versions and filled in from
# squeue below otherwise: a rank stops by itself when less than twice its longest task is left.
#
# Exit codes. 75 (checkpointed) -> "scontrol requeue $SLURM_JOB_ID", then exit 0: the job goes back to the
# queue with the same id, arguments and output file (--open-mode=append keeps earlier runs' logs), and
# the next run resumes from the checkpoints. Not after SIGTERM (scancel, preemption, the hard limit):
# exit 75, resubmit by hand. Every other code is the job's exit code (0 done, 2 bad config or input,
# 3 resources, 1 other). At most LSSC_MAX_ATTEMPTS runs (SLURM_RESTART_COUNT counts the requeues).
#
# Environment: LSSC_CMD, LSSC_LAUNCHER (default srun; "mpirun" for Open MPI's launcher), NP,
# LSSC_MAX_ATTEMPTS: see common.sh.
set -uo pipefail

LSSC_SCRIPT=slurm_run.sh
LSSC_JOBS_DIR=${LSSC_JOBS_DIR:-$(dirname "${BASH_SOURCE[0]}")}
[[ -f $LSSC_JOBS_DIR/common.sh ]] || LSSC_JOBS_DIR=${SLURM_SUBMIT_DIR:-$PWD}/jobs
# shellcheck source=jobs/common.sh
source "$LSSC_JOBS_DIR/common.sh" || exit 2

# Site set-up (modules, virtualenv) goes here, e.g.: module load openmpi; source ~/lssc/.venv/bin/activate

lssc_check_args "$@"
lssc_set_launcher srun
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

# squeue prints the end time (%e) as local time, e.g. 2024-05-01T12:34:56; "N/A" or "NONE" -> skipped.
if [[ -z ${SLURM_JOB_END_TIME:-} && -n ${SLURM_JOB_ID:-} ]]; then
    end=$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null) && end=$(date -d "$end" +%s 2>/dev/null) &&
        export SLURM_JOB_END_TIME=$end
fi

lssc_run "$@"
if lssc_should_rerun $((${SLURM_RESTART_COUNT:-0} + 1)); then
    if [[ -z ${SLURM_JOB_ID:-} ]]; then
        lssc_log "not inside a Slurm job (no SLURM_JOB_ID): cannot requeue; rerun to resume"
    elif scontrol requeue "$SLURM_JOB_ID"; then
        lssc_log "requeued job $SLURM_JOB_ID"
        exit 0
    else
        lssc_log "scontrol requeue $SLURM_JOB_ID failed: resubmit the job to resume"
    fi
fi
exit "$LSSC_STATUS"
