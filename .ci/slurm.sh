#!/usr/bin/env bash
# A single-node SLURM on this machine, for the tests of distributed=slurm against a real scheduler
# (tests/test_slurm_real.py calls it; see README "Tests").
#
#   .ci/slurm.sh up     install slurmctld/slurmd/munge if missing (Debian/Ubuntu, as root), write a minimal
#                       slurm.conf for this node's CPUs and memory, start munged, slurmctld and slurmd; prints
#                       "started" or "already up". Idempotent: a second `up` changes nothing.
#   .ci/slurm.sh down   stop the daemons this script started (by their pid files) and remove its slurm.conf.
#   .ci/slurm.sh status exit 0 when the scheduler this script started answers.
#
# No accounting (no slurmdbd/MariaDB): sacct is unavailable, squeue and scontrol answer while a job is known.
# It refuses to touch a machine that already has a slurm.conf of its own (a real cluster's node).
# Exit status 3: this machine cannot have it (not root, no apt-get, another slurm.conf); the reason is on stderr.
set -euo pipefail

STATE=${INTERNVL_SLURM_STATE:-/var/lib/internvl-exp-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by internvl-exp .ci/slurm.sh"
NODE=$(hostname -s)

cannot() { echo "slurm.sh: $*" >&2; exit 3; }

answers() { timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; }

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    command -v apt-get >/dev/null || cannot "slurmctld/slurmd/munge are not installed and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >"$STATE/apt.log" 2>&1 \
        || { apt-get update -q >>"$STATE/apt.log" 2>&1 && apt-get install -y -q --no-install-recommends \
             slurmctld slurmd slurm-client munge >>"$STATE/apt.log" 2>&1; } \
        || cannot "apt-get install slurmctld slurmd slurm-client munge failed (log: $STATE/apt.log)"
}

write_conf() {
    # This node as slurmd sees it (CPUs, sockets, cores, threads), with 1 GiB of its memory left to the system.
    local hw mem
    hw=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=.*//')
    mem=$(slurmd -C | head -1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mem=$(( mem > 2048 ? mem - 1024 : mem ))
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
    cat >"$CONF" <<EOF
$MARK (remove with: .ci/slurm.sh down)
ClusterName=internvl-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerParameters=sched_interval=2
MinJobAge=300
KillWait=30
NodeName=$NODE NodeAddr=127.0.0.1 $hw RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged || cannot "munged did not start"
    touch "$STATE/munged.ours"  # ours to stop on `down`
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    cannot "munged did not start"
}

up() {
    [ "$(id -u)" = 0 ] || cannot "needs root (it installs packages and starts system daemons); run as root"
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        cannot "$CONF exists and was not written by this script (a real SLURM node?); leaving it alone"
    fi
    mkdir -p "$STATE"
    if [ -f "$CONF" ] && answers; then echo "already up"; return; fi
    install
    write_conf
    start_munge
    # -c: a cold start (no jobs from an earlier run of the script).
    pgrep -F "$STATE/slurmctld.pid" >/dev/null 2>&1 || slurmctld -c \
        || cannot "slurmctld did not start (log: $STATE/slurmctld.log)"
    pgrep -F "$STATE/slurmd.pid" >/dev/null 2>&1 || slurmd || cannot "slurmd did not start (log: $STATE/slurmd.log)"
    for _ in $(seq 100); do
        if answers && sinfo -h -N -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then echo "started"; return; fi
        sleep 0.2
    done
    cannot "slurmctld/slurmd did not come up in 20 s (logs: $STATE/slurmctld.log, $STATE/slurmd.log)"
}

stop_pidfile() {  # the daemon whose pid file this script's slurm.conf named, and only it
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
}

down() {
    [ -f "$CONF" ] && grep -qF "$MARK" "$CONF" || { echo "not up (no slurm.conf of ours)"; return; }
    timeout 10 scancel --full --signal=KILL --user=root >/dev/null 2>&1 || true  # jobs left by a failed test
    stop_pidfile "$STATE/slurmd.pid"
    stop_pidfile "$STATE/slurmctld.pid"
    if [ -f "$STATE/munged.ours" ]; then
        stop_pidfile /run/munge/munged.pid
        rm -f "$STATE/munged.ours"
    fi
    rm -f "$CONF"
    echo "stopped"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) [ -f "$CONF" ] && grep -qF "$MARK" "$CONF" && answers ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
