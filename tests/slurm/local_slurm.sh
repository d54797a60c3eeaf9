#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests/test_slurm.py: `local_slurm.sh start|stop`.
# Installs Debian's slurm-wlm and munge if missing (root only), writes a one-node slurm.conf from
# `slurmd -C`, starts munged, slurmctld and slurmd by hand (no systemd) and waits for the node.
# Accounting is off: finished jobs are recorded by jobcomp/filetxt in $JOBCOMP (one line per job).
set -euo pipefail
STATE=${ADBENCH_SLURM_STATE:-/tmp/adbench-slurm}
JOBCOMP=$STATE/jobcomp.log

start() {
    [ "$(id -u)" = 0 ] || { echo "local SLURM needs root (installs packages, starts daemons)"; exit 3; }
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        timeout 180 apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
            || { timeout 180 apt-get update -q >/dev/null 2>&1 && timeout 180 apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; } \
            || { echo "cannot install slurm-wlm and munge with apt-get"; exit 3; }
    fi
    stop >/dev/null 2>&1 || true
    mkdir -p "$STATE"/{ctld,slurmd} /run/munge /var/log/munge /etc/slurm
    chown munge:munge /run/munge /var/log/munge
    [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --force
    host=$(hostname)
    getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts
    node=$(slurmd -C | head -1)  # NodeName=... CPUs=... RealMemory=...
    cat > /etc/slurm/slurm.conf <<CONF
ClusterName=adbench
SlurmctldHost=$host
SlurmUser=root
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP
MinJobAge=600
ReturnToService=2
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld
    slurmd
    for _ in $(seq 60); do
        if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "local SLURM up: $(sinfo -h -o '%P %D %t %c CPUs %m MB')"
            return 0
        fi
        sleep 1
    done
    echo "SLURM did not become ready; see $STATE/slurmctld.log"
    exit 4
}

stop() {
    for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    pkill -x munged 2>/dev/null || true
    sleep 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop"; exit 2 ;;
esac
