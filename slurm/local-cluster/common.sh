# Helpers shared by start.sh and stop.sh (sourced, not executed).
# Expects $STATE to be set.

# pid_alive PIDFILE COMM [ARGS]: true if PIDFILE names a live process whose
# /proc comm is COMM and (if ARGS is given) whose command line contains ARGS as
# whole words. Guards against stale PID files and PID reuse.
pid_alive() {
    local pidfile=$1 comm=$2 args=${3:-} pid
    pid=$(pid_of "$pidfile")
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

# pid_of PIDFILE: the number in it, or nothing when it is missing. A daemon (munged) removes
# its own PID file as it exits, so the file can vanish between a test and the read: no error then.
pid_of() { tr -dc '0-9' 2>/dev/null <"$1" || true; }

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
