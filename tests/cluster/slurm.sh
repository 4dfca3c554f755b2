#!/usr/bin/env bash
# Single-node SLURM test cluster for the pipeline's tests (root only).
#
#   tests/cluster/slurm.sh install   apt-get install slurmctld slurmd slurm-client munge (if missing)
#   tests/cluster/slurm.sh start     write config, start munged + slurmctld + slurmd, wait for an idle node
#   tests/cluster/slurm.sh status    exit 0 when the cluster answers and the node is usable
#   tests/cluster/slurm.sh stop      cancel jobs, stop the daemons, remove the state dir
#   tests/cluster/slurm.sh env       print `export SLURM_CONF=... PATH=<state>/bin:$PATH` (eval it)
#
# Everything lives in one state dir ($SIPEC_SLURM_DIR, default /tmp/sipec-slurm):
# slurm.conf, the munge key and socket, spool/state dirs, pid files and logs.
# Nothing under /etc is written; clients find the cluster through
#   SLURM_CONF=$SIPEC_SLURM_DIR/slurm.conf
# which every sbatch/squeue/srun call (and so snakemake with the slurm executor and
# the jobs it submits) must see in its environment.  The jobstep plugin
# (snakemake-executor-plugin-slurm-jobstep 0.6.1) drops every SLURM_* variable,
# SLURM_CONF included, before it runs `srun` inside a job, so the start command also
# writes wrappers for srun, sbatch, squeue, ... into $SIPEC_SLURM_DIR/bin that set
# SLURM_CONF themselves: put that dir first on PATH (jobs inherit PATH), e.g.
#   eval "$(tests/cluster/slurm.sh env)"
#
# Environment knobs:
#   SIPEC_SLURM_DIR           state dir (default /tmp/sipec-slurm); every parent dir must be
#                             world-traversable (munged runs as user munge), so not
#                             under pytest's /tmp/pytest-of-root (mode 0700)
#   SIPEC_SLURM_PARTITION     default partition name (default "cpu", matches profiles/slurm)
#   SIPEC_SLURM_GPU_PARTITION second partition on the same node, no GPUs (default "gpu")
#   SIPEC_SLURM_CTLD_PORT     slurmctld port (default 6817)
#   SIPEC_SLURM_SLURMD_PORT   slurmd port (default 6818)
#   SIPEC_SLURM_START_TIMEOUT seconds to wait for the node to become idle (default 60)
#   SIPEC_SLURM_NODE_CPUS     CPUs the node declares at least (default 8; oversubscribes small machines)
#   SIPEC_SLURM_NODE_MEMORY_MB memory the node declares at least (default 65536; not enforced)
#
# Only 127.0.0.1 is used: the node is "localhost" with NodeAddr=127.0.0.1.
set -euo pipefail

STATE_DIR="${SIPEC_SLURM_DIR:-/tmp/sipec-slurm}"
PARTITION="${SIPEC_SLURM_PARTITION:-cpu}"
GPU_PARTITION="${SIPEC_SLURM_GPU_PARTITION:-gpu}"
CTLD_PORT="${SIPEC_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${SIPEC_SLURM_SLURMD_PORT:-6818}"
START_TIMEOUT="${SIPEC_SLURM_START_TIMEOUT:-60}"
NODE_MEMORY_MB="${SIPEC_SLURM_NODE_MEMORY_MB:-65536}"
NODE_CPUS="${SIPEC_SLURM_NODE_CPUS:-8}"
PACKAGES=(slurmctld slurmd slurm-client munge)

CONF="$STATE_DIR/slurm.conf"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
LOG_DIR="$STATE_DIR/log"
MARKER="$STATE_DIR/.sipec-slurm"

export SLURM_CONF="$CONF"

log() { echo "slurm.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (the test cluster runs slurmd/slurmctld as root)"
}

# ---------------------------------------------------------------- install
packages_missing() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    echo "${missing[@]:-}"
}

cmd_install() {
    need_root
    local missing
    missing=$(packages_missing)
    if [[ -z "$missing" ]]; then
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found; install ${PACKAGES[*]} by hand"
    log "installing: $missing"
    # Keep the packages' maintainer scripts from starting system-wide services
    # (we start our own daemons from the state dir).
    local policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local rc=0 out
    local -a apt=(apt-get -y -qq -o DPkg::Lock::Timeout=120)
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    out=$("${apt[@]}" install --no-install-recommends $missing </dev/null 2>&1) || rc=$?
    if [[ $rc -ne 0 ]]; then
        # fresh machine: the package lists may be empty or stale
        rc=0
        # shellcheck disable=SC2086
        out=$( { "${apt[@]}" update && "${apt[@]}" install --no-install-recommends $missing; } </dev/null 2>&1) || rc=$?
    fi
    if [[ $rc -ne 0 ]]; then
        echo "$out" | tail -n 30 >&2
        die "apt-get install failed (rc=$rc)"
    fi
    missing=$(packages_missing)
    [[ -z "$missing" ]] || die "packages still missing after install: $missing"
}

# ---------------------------------------------------------------- helpers
pid_alive() {  # pid file -> 0 when the process named in it is alive
    local f=$1 pid
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

node_state() {
    timeout 10 sinfo -h -N -n localhost -o '%T' 2>/dev/null | head -n1 || true
}

node_usable() {
    local s
    s=$(node_state)
    # idle, mixed, allocated, completing (a trailing * means "not responding")
    [[ $s =~ ^(idle|mixed|allocated|completing)$ ]]
}

daemons_alive() {
    pid_alive "$MUNGE_DIR/munged.pid" && pid_alive "$STATE_DIR/slurmctld.pid" && pid_alive "$STATE_DIR/slurmd.pid"
}

log_tails() {
    local f
    for f in "$LOG_DIR"/munged.log "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log "$LOG_DIR"/*.out; do
        [[ -s $f ]] || continue
        echo "----- tail $f" >&2
        tail -n 25 "$f" >&2
    done
}

node_line() {
    # With SlurmdParameters=config_overrides slurmd trusts this line instead of the
    # hardware.  Neither CPUs nor memory are enforced here (no cgroups, task/none,
    # jobacct_gather/none), so the node declares at least NODE_CPUS CPUs and
    # NODE_MEMORY_MB of memory: short test jobs then run side by side even on a
    # 2-core CI machine, and the profile's per-rule mem_mb requests fit.
    local hw cpus mem
    hw=$(slurmd -C 2>/dev/null | head -n1) || true
    cpus=$(tr ' ' '\n' <<<"$hw" | sed -n 's/^CPUs=//p')
    mem=$(tr ' ' '\n' <<<"$hw" | sed -n 's/^RealMemory=//p')
    [[ $cpus =~ ^[0-9]+$ ]] || cpus=$(nproc)
    [[ $mem =~ ^[0-9]+$ ]] || mem=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
    ((cpus >= NODE_CPUS)) || cpus=$NODE_CPUS
    ((mem >= NODE_MEMORY_MB)) || mem=$NODE_MEMORY_MB
    echo "NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
}

write_config() {
    local node
    node=$(node_line)
    cat >"$CONF" <<EOF
# Generated by tests/cluster/slurm.sh - single-node test cluster, do not edit.
ClusterName=sipec-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
# squeue-based status checks need finished jobs to stay visible for a while
MinJobAge=600
KillWait=5
InactiveLimit=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
$node
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PARTITION Nodes=localhost Default=NO MaxTime=INFINITE State=UP
EOF
}

# ---------------------------------------------------------------- start
start_failed() {
    # stop whatever did start; keep the state dir (logs) until the next start/stop
    stop_daemons "slurmd:$STATE_DIR/slurmd.pid" "slurmctld:$STATE_DIR/slurmctld.pid" "munged:$MUNGE_DIR/munged.pid"
    die "$* (daemons stopped; logs in $LOG_DIR)"
}

write_wrappers() {
    # Client commands that find the test cluster whatever the environment says.
    local c real
    install -d -m 0755 "$STATE_DIR/bin"
    for c in srun sbatch squeue sinfo scontrol scancel salloc sacct sacctmgr sshare sstat; do
        real=$(PATH=/usr/local/bin:/usr/bin:/bin command -v "$c" || true)
        [[ -n $real && $real != "$STATE_DIR/bin/$c" ]] || continue
        printf '#!/bin/sh\n# written by tests/cluster/slurm.sh\nSLURM_CONF=%q\nexport SLURM_CONF\nexec %q "$@"\n' \
            "$CONF" "$real" >"$STATE_DIR/bin/$c"
        chmod 0755 "$STATE_DIR/bin/$c"
    done
}

start_munged() {
    pid_alive "$MUNGE_DIR/munged.pid" && return 0
    id munge >/dev/null 2>&1 || die "user 'munge' missing (is the munge package installed?)"
    install -d -m 0755 -o munge -g munge "$MUNGE_DIR"
    if [[ ! -s $MUNGE_DIR/munge.key ]]; then
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0400 "$MUNGE_DIR/munge.key"
    touch "$LOG_DIR/munged.log"
    chown munge:munge "$LOG_DIR/munged.log"
    chmod 0640 "$LOG_DIR/munged.log"
    runuser -u munge -- /usr/sbin/munged \
        --key-file="$MUNGE_DIR/munge.key" \
        --socket="$MUNGE_SOCKET" \
        --pid-file="$MUNGE_DIR/munged.pid" \
        --seed-file="$MUNGE_DIR/munged.seed" \
        --log-file="$LOG_DIR/munged.log" \
        </dev/null >>"$LOG_DIR/munged.out" 2>&1 \
        || { log_tails; start_failed "munged failed to start"; }
    local i
    for i in $(seq 1 50); do
        [[ -S $MUNGE_SOCKET ]] && pid_alive "$MUNGE_DIR/munged.pid" && return 0
        sleep 0.1
    done
    log_tails
    start_failed "munged did not create its socket $MUNGE_SOCKET"
}

cmd_start() {
    need_root
    if [[ -f $MARKER ]] && daemons_alive && node_usable; then
        log "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    if [[ -f $MARKER ]]; then
        log "stale or half-started cluster in $STATE_DIR: restarting"
        cmd_stop
    fi
    local missing
    missing=$(packages_missing)
    [[ -z $missing ]] || cmd_install

    local t0=$SECONDS
    if [[ -e $STATE_DIR && ! -f $MARKER ]] && [[ -n $(ls -A "$STATE_DIR" 2>/dev/null) ]]; then
        die "$STATE_DIR exists, is not empty and was not created by slurm.sh; set SIPEC_SLURM_DIR"
    fi
    install -d -m 0755 "$STATE_DIR" "$STATE_DIR/ctld" "$STATE_DIR/spool" "$LOG_DIR"
    touch "$MARKER"
    write_config
    write_wrappers

    start_munged
    slurmctld -f "$CONF" </dev/null >>"$LOG_DIR/slurmctld.out" 2>&1 \
        || { log_tails; start_failed "slurmctld failed to start"; }
    slurmd -f "$CONF" -N localhost </dev/null >>"$LOG_DIR/slurmd.out" 2>&1 \
        || { log_tails; start_failed "slurmd failed to start"; }

    local deadline=$((SECONDS + START_TIMEOUT)) s resumed=0
    while ((SECONDS < deadline)); do
        s=$(node_state)
        if [[ $s =~ ^(idle|mixed|allocated)$ ]]; then
            log "cluster up in $((SECONDS - t0)) s: node localhost $s, partitions $PARTITION (default), $GPU_PARTITION"
            log "use it with: eval \"\$($0 env)\"  (SLURM_CONF=$CONF, PATH=$STATE_DIR/bin:...)"
            return 0
        fi
        if [[ $s =~ ^(down|drained|draining|drain) ]] && ((resumed == 0)); then
            scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
            resumed=1
        fi
        if ! daemons_alive; then
            sleep 0.5
            daemons_alive || break
        fi
        sleep 0.5
    done
    log "node state: '${s:-<no answer>}'"
    pid_alive "$MUNGE_DIR/munged.pid" || log "munged is not running"
    pid_alive "$STATE_DIR/slurmctld.pid" || log "slurmctld is not running"
    pid_alive "$STATE_DIR/slurmd.pid" || log "slurmd is not running"
    timeout 10 sinfo -N -l >&2 2>&1 || true
    log_tails
    start_failed "cluster did not come up within ${START_TIMEOUT} s"
}

# ---------------------------------------------------------------- stop
stop_daemons() {  # name:pidfile ... -> SIGTERM all at once, SIGKILL what is left after 10 s
    local item name f pid i alive
    local -a names=() pids=()
    for item in "$@"; do
        name=${item%%:*} f=${item#*:}
        pid_alive "$f" || continue
        pid=$(<"$f")
        kill -TERM "$pid" 2>/dev/null || true
        names+=("$name") pids+=("$pid")
    done
    for i in $(seq 1 100); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            log "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM, sending SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
    done
}

cmd_stop() {
    need_root
    if [[ ! -e $STATE_DIR ]]; then
        return 0
    fi
    [[ -f $MARKER ]] || die "$STATE_DIR was not created by slurm.sh; refusing to touch it"
    if pid_alive "$STATE_DIR/slurmctld.pid"; then
        # cancel what is still queued or running so no job step outlives the cluster
        local jobs i
        jobs=$(timeout 10 squeue -h -o '%i' -t PD,R,CG,S 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            for i in $(seq 1 30); do
                [[ -z $(timeout 5 squeue -h -o '%i' -t PD,R,CG,S 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_daemons "slurmd:$STATE_DIR/slurmd.pid" "slurmctld:$STATE_DIR/slurmctld.pid" "munged:$MUNGE_DIR/munged.pid"
    case $STATE_DIR in
        / | "" | /tmp | /var | /etc | /root) die "refusing to remove $STATE_DIR" ;;
    esac
    rm -rf -- "$STATE_DIR"
}

# ---------------------------------------------------------------- status
cmd_status() {
    if [[ ! -f $MARKER ]]; then
        echo "not running (no state dir $STATE_DIR)"
        return 1
    fi
    local d rc=0
    for d in "munged:$MUNGE_DIR/munged.pid" "slurmctld:$STATE_DIR/slurmctld.pid" "slurmd:$STATE_DIR/slurmd.pid"; do
        if pid_alive "${d#*:}"; then
            echo "${d%%:*}: running (pid $(<"${d#*:}"))"
        else
            echo "${d%%:*}: not running"
            rc=1
        fi
    done
    echo "SLURM_CONF=$CONF"
    if ((rc == 0)); then
        timeout 10 sinfo 2>&1 || rc=1
        node_usable || rc=1
    fi
    return $rc
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env)
        echo "export SLURM_CONF=$CONF"
        echo "export PATH=$STATE_DIR/bin:\$PATH"
        ;;
    *)
        echo "usage: $0 {install|start|stop|status|env}" >&2
        exit 2
        ;;
esac
