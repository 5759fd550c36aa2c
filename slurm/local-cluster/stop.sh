#!/usr/bin/env bash
# Stop the local Slurm cluster started by start.sh.
#
#   bash slurm/local-cluster/stop.sh [--keep-jobs]
#
# Only the daemons named by PID files in the state dir ($NFS_SLURM_DIR,
# default /tmp/nfs-slurm) are stopped: slurmd x N, slurmctld, slurmdbd and
# mariadbd (--with-accounting), munged. Any
# other Slurm/munge process on the machine is left alone. Idempotent.
# Unless --keep-jobs is given, jobs still in the queue are cancelled first
# (and waited for, up to 20 s) so no slurmstepd/job processes outlive the
# cluster. slurmctld saves its state on SIGTERM; the next start.sh recovers it
# (job ids keep counting). Use `start.sh --clean` for a blank slate.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${NFS_SLURM_DIR:-/tmp/nfs-slurm}
KEEP_JOBS=0
for a in "$@"; do
    case "$a" in
        --keep-jobs) KEEP_JOBS=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "stop.sh: unknown argument: $a" >&2; exit 2 ;;
    esac
done
# shellcheck source=common.sh
source "$HERE/common.sh"
log() { echo "stop.sh: $*"; }

if [[ ! -d $STATE ]]; then
    log "no state dir $STATE: nothing to stop"
    exit 0
fi
export SLURM_CONF=$STATE/etc/slurm.conf

# stop_pid PIDFILE COMM [ARGS] NAME: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
    local pidfile=$1 comm=$2 args=$3 name=$4 pid
    if ! pid_alive "$pidfile" "$comm" "$args"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(pid_of "$pidfile")
    [[ -n $pid ]] || { rm -f "$pidfile"; return 0; }       # it exited (and removed it) just now
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        pid_alive "$pidfile" "$comm" "$args" || { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    log "$name did not exit after 30 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        pid_alive "$pidfile" "$comm" "$args" || break
        sleep 0.1
    done
    rm -f "$pidfile"
}

if [[ $KEEP_JOBS == 0 ]] && pid_alive "$STATE/run/slurmctld.pid" slurmctld; then
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [[ -n ${jobs// /} ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 40); do
            [[ -z "$(squeue -h -o %A 2>/dev/null)" ]] && break
            sleep 0.5
        done
    fi
fi

for f in "$STATE"/run/slurmd-*.pid; do
    [[ -e $f ]] || continue
    n=${f##*/slurmd-}; n=${n%.pid}
    stop_pid "$f" slurmd "-N $n" "slurmd $n"
done
stop_pid "$STATE/run/slurmctld.pid" slurmctld "" slurmctld
# --with-accounting extras (absent otherwise)
stop_pid "$STATE/run/slurmdbd.pid" slurmdbd "" slurmdbd
stop_pid "$STATE/mysql/mysqld.pid" mariadbd "" mariadbd
stop_pid "$STATE/munge/munged.pid" munged "" munged
log "stopped (state kept in $STATE)"
