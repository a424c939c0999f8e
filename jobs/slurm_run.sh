#!/bin/bash
# Lines marked SITE depend on your cluster: edit them. The other #SBATCH lines make the requeue work.
#SBATCH --job-name=lensing-ssc
# SITE: the account (project, allocation) and partition (queue) to charge and run in; remove one '#'.
##SBATCH --account=my_account
##SBATCH --partition=my_partition
# SITE: ranks = nodes x tasks per node, one rank per core (32-core nodes here); see docs/clusters.md for
# the memory per rank, which may call for fewer ranks per node at nside 8192.
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
# SITE: the wall time of one run, at most the partition's limit; every requeued run gets it again.
#SBATCH --time=24:00:00
# SITE (path): the log, relative to the submit directory. Appended to, so the requeued runs' logs follow.
#SBATCH --output=lensing-ssc-%j.out
#SBATCH --open-mode=append
# The job may be requeued; SIGUSR1 reaches this batch shell 120 s before the time limit. Raise 120 if a
# task of your runs can take longer than about a minute (the ranks stop only at a task boundary).
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#
# One lensing_ssc run (one simulation) under Slurm, requeued until it is done:
#
#     cd /path/to/lensing_ssc && sbatch jobs/slurm_run.sh CONFIG.yaml [lensing-ssc run options]
#
# Copy this file, edit the SITE lines above and below, and submit from the repository root (or export
# LSSC_JOBS_DIR=/path/to/lensing_ssc/jobs): Slurm runs a copy of this file, so common.sh is looked up in
# $SLURM_SUBMIT_DIR/jobs. Load modules / activate the virtualenv before sbatch (the job and its requeued
# runs inherit the environment) or at "Site set-up" below. scripts/local_slurm.sh starts a one-node Slurm
# on a workstation to try it (docs/clusters.md); tests/cluster/test_slurm.py runs it there.
#
# Signals. --signal=B:USR1@120 sends SIGUSR1 to this batch shell only, 120 s before the time limit. The
# shell forwards it to srun (or mpirun), which passes it to every rank; the ranks checkpoint at the next
# task boundary and exit 75. (Without "B:", Slurm would signal the processes of the srun step directly
# and leave the shell unaware; it also would not reach an mpirun started by the shell.) The time limit
# also reaches the ranks through SLURM_JOB_END_TIME, set by recent Slurm versions and filled in from
# squeue below otherwise: a rank stops by itself when less than twice its longest task is left.
# Slurm checks time limits periodically: the warning may come up to 60 s earlier than asked.
#
# By hand: "scancel --batch --signal=USR1 JOBID" does what the time-limit warning does (checkpoint, exit
# 75, requeue, resume) with either launcher. "scancel --signal=USR1 JOBID" signals the job's steps only:
# the ranks of srun get it directly and the job is requeued all the same, but an mpirun started by this
# shell is no step and never sees it.
#
# Exit codes. 75 (checkpointed) -> "scontrol requeue $SLURM_JOB_ID", then exit 0: the job goes back to the
# queue with the same id, arguments and output file (--open-mode=append keeps earlier runs' logs), and
# the next run resumes from the checkpoints; Slurm starts it again after a delay (about 2 minutes, the
# requeued job's BeginTime). Not after SIGTERM (scancel, preemption, the hard limit): exit 75, resubmit
# by hand. Every other code is the job's exit code (0 done, 2 bad config or input, 3 resources, 1 other).
# At most LSSC_MAX_ATTEMPTS runs (SLURM_RESTART_COUNT counts the requeues).
#
# Environment: LSSC_CMD, LSSC_LAUNCHER (default "srun --cpu-bind=cores"; "mpirun --bind-to core" for Open MPI's launcher), NP,
# LSSC_MAX_ATTEMPTS: see common.sh.
set -uo pipefail

LSSC_SCRIPT=slurm_run.sh
# SITE (path): the jobs/ directory is found from the submit directory; export LSSC_JOBS_DIR to name it.
LSSC_JOBS_DIR=${LSSC_JOBS_DIR:-$(dirname "${BASH_SOURCE[0]}")}
[[ -f $LSSC_JOBS_DIR/common.sh ]] || LSSC_JOBS_DIR=${SLURM_SUBMIT_DIR:-$PWD}/jobs
# shellcheck source=jobs/common.sh
source "$LSSC_JOBS_DIR/common.sh" || exit 2

# SITE: Site set-up (modules, virtualenv) goes here, e.g.: module load openmpi; source ~/lssc/.venv/bin/activate

lssc_check_args "$@"
# SITE: the launcher. Plain srun needs the cluster's MpiDefault to suit your MPI (or LSSC_LAUNCHER=
# "srun --mpi=pmix --cpu-bind=cores"; "srun --mpi=list" shows the choices); LSSC_LAUNCHER="mpirun
# --bind-to core" uses Open MPI's own. --cpu-bind=cores pins each rank to its own core(s): no rank
# migrates or shares a core with another, and a rank given one core (--cpus-per-task=1) runs without
# read-ahead threads (they need a core of their own; see docs/clusters.md, "Placement"). Slurm
# without a binding task plugin (TaskPlugin=task/none, as scripts/local_slurm.sh) prints "lacks
# support for cpu binding" and runs unbound.
lssc_set_launcher "srun --cpu-bind=cores"
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
