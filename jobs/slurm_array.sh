#!/bin/bash
#SBATCH --job-name=lensing-ssc-array
#SBATCH --array=100-109%4
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
#SBATCH --time=24:00:00
#SBATCH --output=lensing-ssc-%A_%a.out
#SBATCH --open-mode=append
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
# Everything else (editing, environment, exit codes): see slurm_run.sh and jobs/README.md.
set -uo pipefail

LSSC_SCRIPT=slurm_array.sh
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
sed "s/{seed}/$seed/g" "$template" >"$config.tmp.$$" && mv -f "$config.tmp.$$" "$config" ||
    lssc_fail "cannot write '$config'"
lssc_log "array task $SLURM_ARRAY_TASK_ID: seed $seed, config $config"

# exec keeps this process (the batch shell that Slurm signals) for slurm_run.sh.
exec bash "$LSSC_JOBS_DIR/slurm_run.sh" "$config" "${@:2}"
