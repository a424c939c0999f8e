#!/bin/bash
# Lines marked SITE depend on your cluster: edit them. The other #SBATCH lines make the requeue work.
#SBATCH --job-name=lensing-ssc-array
# SITE: the seeds (array indices, see below) and how many run at once (%4); usually given to sbatch.
#SBATCH --array=100-109%4
# SITE: the account (project, allocation) and partition (queue) to charge and run in; remove one '#'.
##SBATCH --account=my_account
##SBATCH --partition=my_partition
# SITE: ranks of each array task = nodes x tasks per node, one rank per core (32-core nodes here).
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
# SITE: the wall time of one run of one array task, at most the partition's limit.
#SBATCH --time=24:00:00
# SITE (path): the log of each array task, relative to the submit directory; appended to on requeue.
#SBATCH --output=lensing-ssc-%A_%a.out
#SBATCH --open-mode=append
# The tasks may be requeued; SIGUSR1 reaches the batch shell 120 s before the time limit (see slurm_run.sh).
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#
# A family of simulations as a Slurm job array, one array task per seed, each run like slurm_run.sh
# (same signal handling and requeue on exit 75; a requeue concerns only its own array task):
#
#     cd /path/to/lensing_ssc && sbatch --array=100-139%8 jobs/slurm_array.sh TEMPLATE.yaml [options]
#
# Seed -> config: seed = LSSC_SEED_OFFSET (default 0) + SLURM_ARRAY_TASK_ID, so --array=100-139 runs
# seeds 100..139, --array=1,5,9 seeds 1, 5 and 9, and LSSC_SEED_OFFSET=10000 with --array=0-99 seeds
# 10000..10099 (array indices are limited by Slurm's MaxArraySize). Every "{seed}" in TEMPLATE.yaml is
# replaced by the seed, giving LSSC_CONFIG_DIR/<template name>_s<seed>.yaml (LSSC_CONFIG_DIR defaults to
# generated_configs/ in the submit directory), which is then run. The template must use {seed} (at least
# in output_dir, so that the runs do not overwrite each other), e.g.
#
#     data_dir: /scratch/fastpm/bigbox_s{seed}/usmesh
#     output_dir: runs/bigbox/s{seed}
#     seed: {seed}
#
# LSSC_CONFIG_DIR (SITE, path) and LSSC_SEED_OFFSET are read from the environment. Each task runs
# $LSSC_JOBS_DIR/slurm_run.sh, whose "Site set-up" and launcher SITE lines apply here too. Signals,
# environment and exit codes: see slurm_run.sh and jobs/README.md; one array task is checkpointed and
# requeued by hand with "scancel --batch --signal=USR1 JOBID_INDEX".
set -uo pipefail

LSSC_SCRIPT=slurm_array.sh
# SITE (path): the jobs/ directory is found from the submit directory; export LSSC_JOBS_DIR to name it.
LSSC_JOBS_DIR=${LSSC_JOBS_DIR:-$(dirname "${BASH_SOURCE[0]}")}
[[ -f $LSSC_JOBS_DIR/common.sh ]] || LSSC_JOBS_DIR=${SLURM_SUBMIT_DIR:-$PWD}/jobs
export LSSC_JOBS_DIR
# shellcheck source=jobs/common.sh
source "$LSSC_JOBS_DIR/common.sh" || exit 2

lssc_check_args "$@"
template=$1
[[ ${SLURM_ARRAY_TASK_ID:-} =~ ^[0-9]+$ ]] ||
    lssc_fail "SLURM_ARRAY_TASK_ID: expected an array index (sbatch --array), got '${SLURM_ARRAY_TASK_ID:-}'"
[[ ${LSSC_SEED_OFFSET:-0} =~ ^[0-9]+$ ]] ||
    lssc_fail "LSSC_SEED_OFFSET: expected a non-negative integer, got '$LSSC_SEED_OFFSET'"
grep -q '{seed}' "$template" ||
    lssc_fail "$template: a job-array template must contain {seed} (at least in output_dir)"

seed=$((${LSSC_SEED_OFFSET:-0} + SLURM_ARRAY_TASK_ID))
config_dir=${LSSC_CONFIG_DIR:-generated_configs}
name=$(basename "$template")
config=$config_dir/${name%.*}_s$seed.yaml
mkdir -p "$config_dir" || lssc_fail "LSSC_CONFIG_DIR: cannot create '$config_dir'"
# Written to a temporary file and renamed, so that a config is never seen half written.
if ! { sed "s/{seed}/$seed/g" "$template" >"$config.tmp.$$" && mv -f "$config.tmp.$$" "$config"; }; then
    lssc_fail "cannot write '$config'"
fi
lssc_log "array task $SLURM_ARRAY_TASK_ID: seed $seed, config $config"

# exec keeps this process (the batch shell that Slurm signals) for slurm_run.sh.
exec bash "$LSSC_JOBS_DIR/slurm_run.sh" "$config" "${@:2}"
