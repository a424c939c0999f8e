# shellcheck shell=bash
# Shared logic of the lensing_ssc job scripts, sourced by slurm_run.sh, slurm_array.sh, pbs_run.sh and
# local.sh (see jobs/README.md): build the launch command, run it with stop signals forwarded to the
# ranks, and decide from its exit code whether the job must run again (DESIGN.md §3 exit codes, §6
# checkpoint and restart).
#
# Environment (all optional):
#   LSSC_CMD           the command, given CONFIG [options]; split on spaces, no quoting   [lensing-ssc run]
#   LSSC_LAUNCHER      launcher words (e.g. "srun --cpu-bind=cores"), or "none" for one rank without MPI
#                                                               [srun / mpirun / mpiexec, set by each script]
#   NP                 number of ranks, passed to the launcher as "-n NP"                  [launcher's choice]
#   LSSC_MAX_ATTEMPTS  runs of one job in all (the first included) before giving up                     [20]

LSSC_EXIT_CHECKPOINTED=75   # "checkpointed on a signal or the wall-time budget, rerun to resume"
LSSC_EXIT_BAD_INPUT=2
LSSC_CMD=${LSSC_CMD:-lensing-ssc run}
LSSC_MAX_ATTEMPTS=${LSSC_MAX_ATTEMPTS:-20}
LSSC_LAUNCH=()      # launcher words, set by lssc_set_launcher
LSSC_CHILD=         # pid of the running launcher
LSSC_STATUS=        # exit code of the last run
LSSC_STOPPED_BY=    # SIGTERM/SIGINT once received: checkpoint and do not run again

lssc_log() {
    printf '%s %s: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "${LSSC_SCRIPT:-jobs}" "$*" >&2
}

# lssc_fail MESSAGE: log and exit with the bad-input code, like the CLI for a bad config.
lssc_fail() {
    lssc_log "error: $*"
    exit "$LSSC_EXIT_BAD_INPUT"
}

# lssc_check_args CONFIG [OPTION...]: exit 2 unless CONFIG is a readable file, the options do not
# contain --restart (a job that reruns itself would discard its own checkpoints on every run) and the
# numeric settings are positive integers.
lssc_check_args() {
    [[ -n ${1:-} ]] || lssc_fail "usage: ${LSSC_SCRIPT:-jobs} CONFIG [lensing-ssc options]"
    [[ -f $1 && -r $1 ]] || lssc_fail "CONFIG: '$1' is not a readable file"
    local option
    for option in "${@:2}"; do
        [[ $option != --restart ]] || lssc_fail "--restart: not allowed in a job that reruns itself (every" \
            "rerun would discard the checkpoints again); run 'lensing-ssc run --restart' by hand once instead"
    done
    [[ $LSSC_MAX_ATTEMPTS =~ ^[1-9][0-9]*$ ]] ||
        lssc_fail "LSSC_MAX_ATTEMPTS: expected a positive integer, got '$LSSC_MAX_ATTEMPTS'"
    [[ -z ${NP:-} || $NP =~ ^[1-9][0-9]*$ ]] || lssc_fail "NP: expected a positive integer, got '$NP'"
}

# lssc_set_launcher DEFAULT: LSSC_LAUNCH = the words of LSSC_LAUNCHER (DEFAULT when unset) plus "-n NP"
# when NP is set; empty for LSSC_LAUNCHER=none.
lssc_set_launcher() {
    local launcher=${LSSC_LAUNCHER:-$1}
    LSSC_LAUNCH=()
    [[ $launcher != none ]] || return 0
    read -r -a LSSC_LAUNCH <<<"$launcher"
    if [[ -n ${NP:-} ]]; then
        LSSC_LAUNCH+=(-n "$NP")
    fi
}

# Trap handler. Whatever stop signal the script gets, the launcher gets SIGUSR1: srun and Open MPI's
# mpirun/mpiexec pass SIGUSR1 on to every rank, whereas mpiexec answers SIGTERM by killing the ranks and
# exiting 1 even after they checkpointed. The ranks treat SIGUSR1 and SIGTERM alike (checkpoint at the
# next task boundary, exit 75). SIGUSR1 to the script is the "time is nearly up" warning (Slurm
# --signal=B:USR1@..., the PBS timer): the job runs again. SIGTERM/SIGINT (scancel, qdel, preemption,
# the hard time limit, Ctrl-C) mean "stop": the job checkpoints and is not run again.
_lssc_on_signal() {
    [[ $1 == USR1 ]] || LSSC_STOPPED_BY=SIG$1
    lssc_log "SIG$1 received: asking the ranks to checkpoint at the next task boundary"
    [[ -z $LSSC_CHILD ]] || kill -USR1 "$LSSC_CHILD" 2>/dev/null
}

# From here on the script records stop signals instead of dying of them.
trap '_lssc_on_signal USR1' USR1
trap '_lssc_on_signal TERM' TERM
trap '_lssc_on_signal INT' INT

# lssc_run CONFIG [OPTION...]: run LAUNCHER LSSC_CMD CONFIG OPTION... in the background (bash runs a
# trap only between commands, so a foreground child would delay the forwarding until it ends), forward
# stop signals to it, and set LSSC_STATUS to its exit code. The command gets a process group of its own
# (set -m), so that Ctrl-C in a terminal reaches only this script, which forwards it as SIGUSR1; mpiexec
# would otherwise get the SIGINT too and kill the ranks (exit 1) while they checkpoint.
lssc_run() {
    local -a cmd
    local again
    read -r -a cmd <<<"$LSSC_CMD"
    cmd=(${LSSC_LAUNCH[@]+"${LSSC_LAUNCH[@]}"} "${cmd[@]}" "$@")
    lssc_log "running: ${cmd[*]}"
    set -m
    "${cmd[@]}" &
    LSSC_CHILD=$!
    set +m
    while :; do
        wait "$LSSC_CHILD"
        LSSC_STATUS=$?
        # wait also returns (with 128 + signal) when a trapped signal arrives: go on waiting while the
        # command runs.
        kill -0 "$LSSC_CHILD" 2>/dev/null || break
    done
    if ((LSSC_STATUS > 128)); then
        # The signal and the end of the command came together: ask for its own status (127 means it was
        # already reported, so LSSC_STATUS is the command's).
        wait "$LSSC_CHILD"
        again=$?
        ((again == 127)) || LSSC_STATUS=$again
    fi
    LSSC_CHILD=
    lssc_log "exit code $LSSC_STATUS"
    if ((LSSC_STATUS == 128 + $(kill -l USR1))); then
        # A rank that gets SIGUSR1 while Python starts, before the CLI installs its handlers, dies of it
        # (srun and mpirun then exit 138). SIGUSR1 only ever asks for a checkpoint here (this script's
        # forwarding, or "scancel --signal=USR1", which reaches the ranks of an srun step directly), and
        # like a SIGKILL such a death loses nothing: checkpoints and outputs are written atomically
        # (DESIGN.md §6), so a rerun resumes.
        lssc_log "the ranks died of SIGUSR1 before they could handle it: counted as checkpointed (75)"
        LSSC_STATUS=$LSSC_EXIT_CHECKPOINTED
    fi
}

# lssc_should_rerun ATTEMPT: true when the run that just ended (number ATTEMPT, counted from 1)
# checkpointed (exit 75) and the job must run again to resume: no SIGTERM/SIGINT was received and fewer
# than LSSC_MAX_ATTEMPTS runs were made (a job that checkpoints without progress must not loop forever).
lssc_should_rerun() {
    ((LSSC_STATUS == LSSC_EXIT_CHECKPOINTED)) || return 1
    if [[ -n $LSSC_STOPPED_BY ]]; then
        lssc_log "checkpointed after $LSSC_STOPPED_BY: not running again; rerun the job to resume"
        return 1
    fi
    if (($1 >= LSSC_MAX_ATTEMPTS)); then
        lssc_log "checkpointed, but run $1 was the last of LSSC_MAX_ATTEMPTS=$LSSC_MAX_ATTEMPTS: giving up;" \
            "rerun the job to resume"
        return 1
    fi
    lssc_log "checkpointed in run $1 (of at most $LSSC_MAX_ATTEMPTS): the job runs again to resume"
    return 0
}
