#!/usr/bin/env bash
# A one-node Slurm on this machine, to try the job scripts of jobs/ (and run `make test-slurm`):
#
#     scripts/local_slurm.sh start     # install (apt) if missing, configure, start, wait until the node is idle
#     scripts/local_slurm.sh status    # exit 0 when the node answers and takes jobs, 1 otherwise
#     scripts/local_slurm.sh stop      # stop slurmctld, slurmd and munged
#
# Debian/Ubuntu, as root or with sudo. `start` is idempotent: a second call with Slurm up only checks it
# (about a second). It installs slurm-wlm and munge, creates a munge key if there is none, writes
# /etc/slurm/slurm.conf (one node: this host with $(nproc) CPUs, partition "debug", job requeue allowed,
# srun --mpi=pmix by default, processes tracked without cgroups so that it runs in containers too) and
# starts munged, slurmctld and slurmd. An existing slurm.conf not written by this script is never touched.
# Logs: /var/log/slurm/. State: /var/spool/slurmctld and /var/spool/slurmd.
#
# Exit codes: 0 done; 77 Slurm cannot run here (not root and no sudo, no apt-get, install failed, a
# foreign slurm.conf): `make test-slurm` then skips with this reason; 1 the daemons did not come up
# (their logs are printed).
set -uo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# Written by lensing_ssc scripts/local_slurm.sh"
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
NODE=$(hostname -s)
START_TIMEOUT_S=${LSSC_SLURM_START_TIMEOUT_S:-60}
EXIT_CANNOT=77

log() { printf '[local_slurm] %s\n' "$*" >&2; }
cannot() { log "cannot run Slurm here: $*"; exit "$EXIT_CANNOT"; }

SUDO=  # "sudo" for the commands that need root, when not root (sinfo and scontrol show need none)

# need_root: set SUDO, or exit 77 when there is neither root nor password-less sudo.
need_root() {
    [[ $(id -u) -ne 0 ]] || return 0
    if ! { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; then
        cannot "needs root or password-less sudo (installs packages, writes $CONF, starts daemons)"
    fi
    SUDO=sudo
}

# running PIDFILE: true when the process named in PIDFILE is alive.
running() {
    local pid
    pid=$($SUDO cat "$1" 2>/dev/null) && [[ -n $pid ]] && $SUDO kill -0 "$pid" 2>/dev/null
}

# node_state: the state of this host's node as sinfo reports it (idle, mixed, allocated, down*, ...).
node_state() {
    sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1
}

# usable: slurmctld answers and the node can take jobs.
usable() {
    [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]
}

install_packages() {
    local missing=() package
    for package in slurm-wlm munge; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]} (install Slurm by hand)"
    log "installing ${missing[*]} (apt-get)"
    local apt_log
    apt_log=$(mktemp)
    # The packages' own service start-up (systemd) fails harmlessly before slurm.conf exists.
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        rm -f "$apt_log"
        cannot "apt-get install ${missing[*]} failed"
    fi
    rm -f "$apt_log"
}

# node_line: this host's NodeName line as slurmd detects it (sockets, cores, threads), without RealMemory
# (memory is not a consumable here); "NodeName=HOST CPUs=$(nproc)" when slurmd cannot tell.
node_line() {
    local line
    line=$(slurmd -C 2>/dev/null | head -n 1)
    if [[ $line == NodeName=* ]]; then
        echo "${line% RealMemory=*}"
    else
        echo "NodeName=$NODE CPUs=$(nproc)"
    fi
}

# write_config: the slurm.conf of this machine on stdout. The daemons talk over 127.0.0.1, so the host name
# need not resolve.
write_config() {
    cat <<EOF
$MARK: a one-node Slurm for trying
# the job scripts in jobs/ (see docs/clusters.md). Rewritten by 'scripts/local_slurm.sh start' when the
# machine changes; delete this file to configure Slurm yourself.
ClusterName=lssc-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups (containers, laptops without the cgroup set-up): track job processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# srun starts MPI ranks through PMIx (Open MPI + mpi4py), as on most clusters.
MpiDefault=pmix
# Jobs may be requeued (jobs/slurm_run.sh does it on exit 75) and a node that was down comes back.
JobRequeue=1
ReturnToService=2
# Cores are the consumable resource; memory is not accounted.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Pending jobs are looked at every 5 s (default 30-60 s): a requeued job released from its BeginTime by
# "scontrol update JobId=... StartTime=now" starts within seconds.
SchedulerParameters=bf_interval=5,sched_interval=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
# Ranks that ignore SIGTERM are killed this many seconds later (30 on most clusters).
KillWait=30
$(node_line) NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        $SUDO mkdir -p "$(dirname "$MUNGE_KEY")"
        $SUDO dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        $SUDO chown munge:munge "$MUNGE_KEY"
        $SUDO chmod 400 "$MUNGE_KEY"
    fi
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    log "starting munged"
    $SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
    $SUDO chown munge:munge /run/munge /var/log/munge /var/lib/munge
    $SUDO chmod 755 /run/munge
    $SUDO runuser -u munge -- munged || return 1
}

start() {
    if [[ $(id -u) -ne 0 ]] && usable && grep -qF "$MARK" "$CONF" 2>/dev/null; then
        log "Slurm is up: node $NODE $(node_state) (not root: configuration not checked)"
        return 0
    fi
    need_root
    install_packages
    local config
    config=$(write_config)
    if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        cannot "$CONF exists and was not written by this script (leaving that Slurm set-up alone)"
    fi
    if [[ ! -e $CONF ]] || [[ $config != "$($SUDO cat "$CONF")" ]]; then
        if running "$CTLD_PID" || running "$SLURMD_PID"; then
            log "configuration changed: restarting Slurm"
            stop_slurm
        fi
        log "writing $CONF"
        $SUDO mkdir -p "$(dirname "$CONF")"
        printf '%s\n' "$config" | $SUDO tee "$CONF" >/dev/null
    fi
    $SUDO mkdir -p "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    start_munge || { log "munged did not start"; show_logs; return 1; }
    if ! running "$CTLD_PID"; then
        log "starting slurmctld"
        $SUDO slurmctld || { show_logs; return 1; }
    fi
    if ! running "$SLURMD_PID"; then
        log "starting slurmd"
        $SUDO slurmd || { show_logs; return 1; }
    fi
    local deadline=$((SECONDS + START_TIMEOUT_S)) state
    until usable; do
        state=$(node_state)
        # A node left down or drained by an earlier run (e.g. killed daemons) is put back into service.
        if [[ $state =~ ^(down|drain) ]]; then
            $SUDO scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1
        fi
        if ((SECONDS > deadline)); then
            log "node $NODE not idle after $START_TIMEOUT_S s (state '${state:-no answer}')"
            show_logs
            return 1
        fi
        sleep 1
    done
    log "Slurm is up: node $NODE $(node_state), $(nproc) CPUs, partition debug"
}

# stop_slurm: stop slurmctld and slurmd (SIGTERM, their orderly shutdown), waiting until they are gone.
stop_slurm() {
    local pidfile pid deadline
    for pidfile in "$SLURMD_PID" "$CTLD_PID"; do
        running "$pidfile" || continue
        pid=$($SUDO cat "$pidfile")
        $SUDO kill -TERM "$pid"
        deadline=$((SECONDS + 30))
        while $SUDO kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS > deadline)); then
                log "pid $pid ($pidfile) still running after 30 s: SIGKILL"
                $SUDO kill -KILL "$pid" 2>/dev/null
            fi
            sleep 0.5
        done
    done
}

stop() {
    need_root
    stop_slurm
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        $SUDO runuser -u munge -- munged --stop >/dev/null 2>&1 || $SUDO munged --stop >/dev/null 2>&1
    fi
    log "stopped"
}

show_logs() {
    local file
    for file in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        [[ -r $file ]] || continue
        log "last lines of $file:"
        $SUDO tail -n 20 "$file" >&2
    done
}

case ${1:-} in
start) start ;;
stop) stop ;;
status)
    if usable; then
        log "up: node $NODE $(node_state)"
    else
        log "not running (node state '$(node_state)')"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
