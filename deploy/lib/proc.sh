# shellcheck shell=bash
# Background daemons with pid files, for machines without systemd.
# Sourced by deploy/local/up.sh, deploy/local/down.sh and tests/run.sh.

# faas_running PIDFILE NAME: true if the pid file names a live process whose
# command line mentions NAME (a stale pid file, or a reused pid, is not).
faas_running() {
    local pidfile=$1 name=$2 pid
    [ -s "$pidfile" ] || return 1
    read -r pid 2>/dev/null <"$pidfile" || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name"
}

# faas_alive PID: the process exists and is not a zombie.
faas_alive() {
    local stat
    [ -n "$1" ] && stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$(cut -d' ' -f1 <<<"${stat##*) }")" != Z ]
}

# faas_start NAME PIDFILE LOG COMMAND...: starts COMMAND in its own session
# (it outlives the script), output appended to LOG.
faas_start() {
    local name=$1 pidfile=$2 log=$3
    shift 3
    mkdir -p "$(dirname "$pidfile")" "$(dirname "$log")"
    echo "----- $(date -Is) starting: $*" >>"$log"
    # The caller's lock (FAAS_LOCK_FD) must not be inherited: the daemon
    # would hold it for its whole life.
    if [ -n "${FAAS_LOCK_FD:-}" ]; then
        setsid "$@" </dev/null >>"$log" 2>&1 {FAAS_LOCK_FD}>&- &
    else
        setsid "$@" </dev/null >>"$log" 2>&1 &
    fi
    echo $! >"$pidfile"
    echo "[faas] started $name (pid $!, log $log)" >&2
}

# faas_wait NAME PIDFILE LOG SECONDS CHECK...: waits until CHECK succeeds;
# fails with the log tail if the process dies or SECONDS pass.
faas_wait() {
    local name=$1 pidfile=$2 log=$3 seconds=$4 deadline
    shift 4
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        # Alive by pid, not by command line: right after the fork the child
        # may not have exec'd the daemon yet.
        if ! faas_alive "$(cat "$pidfile" 2>/dev/null)"; then
            echo "[faas] ERROR: $name exited while starting; last lines of $log:" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "[faas] ERROR: $name not ready after ${seconds}s; last lines of $log:" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
        sleep 0.2
    done
}

# faas_stop NAME PIDFILE [SECONDS]: SIGTERM, then SIGKILL after SECONDS
# (default 20); removes the pid file. Fine if it is not running.
faas_stop() {
    local name=$1 pidfile=$2 seconds=${3:-20} pid deadline
    if faas_running "$pidfile" "$name"; then
        read -r pid 2>/dev/null <"$pidfile" || { rm -f "$pidfile"; return 0; }
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + seconds))
        while faas_alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        if faas_alive "$pid"; then
            echo "[faas] $name did not stop within ${seconds}s: killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        else
            echo "[faas] stopped $name" >&2
        fi
    fi
    rm -f "$pidfile"
}

# faas_kill_matching PATTERN: SIGKILL every process whose command line
# contains PATTERN, and every process below it (e.g. a containerd shim and
# its container), children first.
faas_kill_matching() {
    local pattern=$1 stat line rest pid
    local -A parent_of=()
    local -a roots=() tree=()
    for stat in /proc/[0-9]*/stat; do
        # Not $(<file): bash exits when that file vanished, even under ||.
        read -r line 2>/dev/null <"$stat" || continue
        pid=${stat#/proc/}
        pid=${pid%/stat}
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        parent_of[$pid]=$2
        [ "$pid" = "$$" ] && continue
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern"; then
            roots+=("$pid")
        fi
    done
    [ ${#roots[@]} -gt 0 ] || return 0
    tree=("${roots[@]}")
    local i=0
    while [ $i -lt ${#tree[@]} ]; do
        for pid in "${!parent_of[@]}"; do
            [ "${parent_of[$pid]}" = "${tree[$i]}" ] && tree+=("$pid")
        done
        i=$((i + 1))
    done
    for ((i = ${#tree[@]} - 1; i >= 0; i--)); do
        [ "${tree[$i]}" = "$$" ] && continue
        kill -KILL "${tree[$i]}" 2>/dev/null || true
    done
    echo "[faas] killed ${#tree[@]} leftover process(es) matching $pattern" >&2
}

# faas_unmount_under DIR: lazily unmounts every mount point under DIR,
# deepest first (overlay root filesystems and shim mounts of a dead containerd).
faas_unmount_under() {
    local dir=$1 point
    [ -n "$dir" ] && [ "$dir" != / ] || return 0
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print length($5) " " $5 }' /proc/self/mountinfo |
        sort -rn | cut -d' ' -f2- | while read -r point; do
        umount -l "$point" 2>/dev/null && echo "[faas] unmounted $point" >&2
    done
    return 0
}
