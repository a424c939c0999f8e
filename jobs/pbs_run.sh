#!/bin/bash
#PBS -N lensing-ssc
#PBS -l select=1:ncpus=32:mpiprocs=32
#PBS -l walltime=24:00:00
#PBS -j oe
#PBS -r y
## Torque instead of PBS Pro: replace the select line by   #PBS -l nodes=1:ppn=32
#
# One lensing_ssc run (one simulation) under PBS Pro / Torque, resubmitted until it is done:
#
#     cd /path/to/lensing_ssc && qsub -v CONFIG=configs/run.yaml jobs/pbs_run.sh
#
# (CONFIG relative to the submit directory; extra lensing-ssc options in LSSC_ARGS, split on spaces;
# `bash jobs/pbs_run.sh CONFIG [options]` also works.) Edit the #PBS lines for your site. The job starts
# in $PBS_O_WORKDIR, where common.sh is looked up as jobs/common.sh (or set LSSC_JOBS_DIR). Put module
# loads and the virtualenv at "Site set-up" below: a resubmitted job does not inherit your shell.
#
# Stopping before the walltime. PBS has no portable "signal before the limit" option, so this script
# keeps its own timer: LSSC_SIGNAL_MARGIN_S (default 120) seconds before the walltime it sends itself
# SIGUSR1, which is forwarded to mpirun and from there to every rank; the ranks checkpoint at the next
# task boundary and exit 75. The walltime is PBS_WALLTIME (Torque) or Resource_List.walltime from
# `qstat -f` (PBS Pro); without either there is no timer (set wall_time_budget_s in the config then).
#
# Requeue mechanism: on exit 75 the script submits itself again, `qsub -v CONFIG=...,LSSC_ATTEMPT=n+1,...
# LSSC_PBS_SCRIPT` (default jobs/pbs_run.sh), and exits 0; the new job resumes from the checkpoints.
# qrerun is not used: on most sites only operators may call it, and it kills the job that calls it.
# The new job gets a new id and output file. Not after SIGTERM (qdel, the hard walltime): exit 75,
# resubmit by hand. Other codes are the job's exit code. At most LSSC_MAX_ATTEMPTS runs in the chain.
# Values passed with -v must not contain commas.
#
# Environment: CONFIG, LSSC_ARGS, LSSC_CMD, LSSC_LAUNCHER (default "mpirun --bind-to core -machinefile $PBS_NODEFILE"; one rank per core),
# NP (default: lines of $PBS_NODEFILE), LSSC_MAX_ATTEMPTS, LSSC_SIGNAL_MARGIN_S, LSSC_PBS_SCRIPT.
set -uo pipefail

# The settings given to this job are handed on to the resubmitted one (captured before defaults apply).
handed_on=
for name in LSSC_CMD LSSC_LAUNCHER NP LSSC_MAX_ATTEMPTS LSSC_SIGNAL_MARGIN_S LSSC_JOBS_DIR LSSC_PBS_SCRIPT; do
    if [[ -n ${!name:-} ]]; then
        handed_on+=",$name=${!name}"
    fi
done

LSSC_SCRIPT=pbs_run.sh
cd "${PBS_O_WORKDIR:-.}" || exit 2
LSSC_JOBS_DIR=${LSSC_JOBS_DIR:-$(dirname "${BASH_SOURCE[0]}")}
[[ -f $LSSC_JOBS_DIR/common.sh ]] || LSSC_JOBS_DIR=$PWD/jobs
# shellcheck source=jobs/common.sh
source "$LSSC_JOBS_DIR/common.sh" || exit 2

# Site set-up (modules, virtualenv) goes here, e.g.: module load openmpi; source ~/lssc/.venv/bin/activate

# walltime_s: the job's walltime in seconds, or nothing when unknown.
walltime_s() {
    local value=${PBS_WALLTIME:-}
    if [[ -z $value && -n ${PBS_JOBID:-} ]]; then
        value=$(qstat -f "$PBS_JOBID" 2>/dev/null | awk -F' = ' '/Resource_List.walltime/ {print $2}')
    fi
    if [[ $value =~ ^([0-9]+):([0-9]+):([0-9]+)$ ]]; then
        echo $((10#${BASH_REMATCH[1]} * 3600 + 10#${BASH_REMATCH[2]} * 60 + 10#${BASH_REMATCH[3]}))
    elif [[ $value =~ ^[0-9]+$ ]]; then
        echo "$value"
    fi
}

# start_timer DELAY_S: SIGUSR1 to this script after DELAY_S seconds; sets timer_pid. The timer's output
# goes to /dev/null and its sleep dies with it, so nothing outlives the job or holds its output open.
start_timer() {
    (
        exec >/dev/null 2>&1
        trap 'kill "$sleeper"; exit 0' TERM
        sleep "$1" &
        sleeper=$!
        wait "$sleeper" && kill -USR1 "$$"
    ) &
    timer_pid=$!
}

if (($# == 0)) && [[ -n ${CONFIG:-} ]]; then
    read -r -a extra_args <<<"${LSSC_ARGS:-}"
    set -- "$CONFIG" ${extra_args[@]+"${extra_args[@]}"}
fi
lssc_check_args "$@"
[[ ${LSSC_ATTEMPT:=1} =~ ^[1-9][0-9]*$ ]] ||
    lssc_fail "LSSC_ATTEMPT: expected a positive integer, got '$LSSC_ATTEMPT'"
margin_s=${LSSC_SIGNAL_MARGIN_S:-120}
[[ $margin_s =~ ^[0-9]+$ ]] || lssc_fail "LSSC_SIGNAL_MARGIN_S: expected seconds, got '$margin_s'"
if [[ -n ${PBS_NODEFILE:-} ]]; then
    NP=${NP:-$(wc -l <"$PBS_NODEFILE")}
    lssc_set_launcher "mpirun --bind-to core -machinefile $PBS_NODEFILE"
else
    lssc_set_launcher "mpirun --bind-to core"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

timer_pid=
walltime=$(walltime_s)
if [[ -z $walltime ]]; then
    lssc_log "walltime unknown: no SIGUSR1 before the limit (set wall_time_budget_s in the config)"
elif ((walltime > margin_s)); then
    start_timer $((walltime - margin_s))
fi

lssc_run "$@"
if [[ -n $timer_pid ]]; then
    kill "$timer_pid" 2>/dev/null
fi

if lssc_should_rerun "$LSSC_ATTEMPT"; then
    vars="CONFIG=$(realpath "$1"),LSSC_ATTEMPT=$((LSSC_ATTEMPT + 1))$handed_on"
    if (($# > 1)); then
        vars+=",LSSC_ARGS=${*:2}"
    fi
    script=${LSSC_PBS_SCRIPT:-$LSSC_JOBS_DIR/pbs_run.sh}
    if qsub -v "$vars" "$script"; then
        lssc_log "resubmitted $script (run $((LSSC_ATTEMPT + 1)))"
        exit 0
    fi
    lssc_log "qsub of $script failed: resubmit the job to resume"
fi
exit "$LSSC_STATUS"
