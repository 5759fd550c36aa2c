# Helpers shared by start.sh and stop.sh (sourced, not executed).
# Expects $STATE to be set.

# pid_alive PIDFILE COMM [ARGS]: true if PIDFILE names a live process whose
# /proc comm is COMM and (if ARGS is given) whose command line contains ARGS as
# whole words. Guards against stale PID files and PID reuse.
pid_alive() {
    local pidfile=$1 comm=$2 args=${3:-} pid
    [[ -s $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid && -d /proc/$pid ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
    # A zombie is not alive.
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 1
    if [[ -n $args ]]; then
        local cmdline
        cmdline=" $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) "
        [[ $cmdline == *" $args "* ]] || return 1
    fi
    return 0
}

pid_of() { tr -dc '0-9' <"$1"; }

# any_daemon_alive: true if any daemon of $STATE runs.
any_daemon_alive() {
    pid_alive "$STATE/munge/munged.pid" munged && return 0
    pid_alive "$STATE/run/slurmctld.pid" slurmctld && return 0
    pid_alive "$STATE/run/slurmdbd.pid" slurmdbd && return 0
    pid_alive "$STATE/mysql/mysqld.pid" mariadbd && return 0
    local f
    for f in "$STATE"/run/slurmd-*.pid; do
        [[ -e $f ]] || continue
        pid_alive "$f" slurmd && return 0
    done
    return 1
}
