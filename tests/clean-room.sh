#!/usr/bin/env bash
# Clean-room check of the README's first command on a pristine Debian 12 root.
#
#   clean-room.sh [--full] [--cold] [--rebuild-base] [--keep] [--stream] [COMMIT]
#
#   COMMIT          commit of this repository to check (default: main's HEAD)
#   --full          run tests/run.sh instead of up.sh + smoke.sh + down.sh
#   --cold          empty the persistent caches first (cargo registry, target)
#   --rebuild-base  make the cached Debian root again
#   --stream        also print the whole log as it is written (CI: .ci/run),
#                   not only the step lines
#   --keep          leave $FAAS_CLEANROOM_DIR/run in place after the run (for
#                   inspection; mounts and processes are still cleaned up)
#
# What it does:
#   1. once: mmdebstrap --variant=minbase --include=ca-certificates,git,python3,curl
#      bookworm $FAAS_CLEANROOM_DIR/base  (cached; --rebuild-base to redo)
#   2. every run: a fresh copy of it at $FAAS_CLEANROOM_DIR/run (a real directory,
#      not an overlay: containerd's overlayfs snapshotter cannot sit on overlayfs)
#   3. the host's extra CA certificates, update-ca-certificates; resolv.conf
#   4. the host's rustup toolchain as a fresh machine has it: ~/.rustup and
#      ~/.cargo/bin bind-mounted READ-ONLY, ~/.cargo/env and the lines rustup's
#      installer appends to ~/.profile and ~/.bashrc; CARGO_HOME (/root/.cargo)
#      otherwise empty
#   5. git clone this repository to /root/faas in the root, checkout COMMIT;
#      ../shared (beside this repository) copied to /root/shared (so ../shared/acceptance/smoke.sh resolves)
#   6. in new PID, mount and UTS namespaces (hostname faas-cleanroom; the
#      network is the host's): proc, rbind /sys and /dev, tmpfs /run, then
#      chroot and, as a root login shell in /root/faas:
#        deploy/local/up.sh ; ../shared/acceptance/smoke.sh ; deploy/local/down.sh --purge
#      (or tests/run.sh with --full). down.sh runs even when a step before it
#      failed; the faas logs are saved before it.
#
# Persistent between runs (in $FAAS_CLEANROOM_DIR/cache, --cold empties them):
#   cargo-registry  -> /root/.cargo/registry   (crates.io index and downloads)
#   target          -> /root/faas/target       (cargo's build directory)
# Everything else (apt state, /var/lib/faas-local, /var/cache/faas with the
# runtime images, ~/.cargo/git) starts pristine every run. A first run (no
# cache yet) is fully cold.
#
# Isolation from the host (other faas stacks may run there): the PID namespace
# means down.sh's "kill every process whose command line matches" sees only
# the clean room's processes; the mount namespace keeps the clean room's mounts
# (containerd's overlays, cgroup v1 mounts) off the host's mount table. If the
# default ports (7070, 12379/12380, 15000) are busy on the host, the run uses
# 17171, 22479/22480, 25100.
#
# On exit: the namespace's init is killed (the kernel kills everything in the
# PID namespace), then any process whose root is under the run dir is killed,
# then every mount under it is unmounted, deepest first.
#
# Output: $FAAS_CLEANROOM_DIR/logs/<UTC time>-<commit>/run.log (everything),
# steps.tsv (step, exit code, seconds), faas-logs-*/ (the faas daemons' logs);
# $FAAS_CLEANROOM_DIR/logs/latest points to it. Prints PASS or FAIL <step>.
# Runs at nice 19 and idle I/O priority (2 cores shared with other work).
set -uo pipefail

# FAAS_CLEANROOM_DIR: where the base root, the run root, the caches and
# the logs live (a real file system with a few GiB free; not overlayfs).
top=${FAAS_CLEANROOM_DIR:-/var/tmp/faas-cleanroom}
base=$top/base
runroot=$top/run
cache=$top/cache
# The repository this script is in, and ../shared beside it if there is one.
repo_host=$(cd "$(dirname "$0")/.." && pwd)
shared_host=$(cd "$repo_host/.." && pwd)/shared
rustup_host=${RUSTUP_HOME:-/root/.rustup}
cargo_bin_host=${CARGO_HOME:-/root/.cargo}/bin

# ---------------------------------------------------------------------------
# Inner part: runs as PID 1 of the new PID namespace, in its own mount ns.
# ---------------------------------------------------------------------------
if [ "${1:-}" = __inner ]; then
    shift
    mode=$1 logdir=$2 warm=$3
    status=$logdir/steps.tsv
    set -e
    say() { echo "[clean-room] $*"; }
    # runc/crun pivot_root into the container's rootfs, which needs the
    # caller's root to be a mount point: on a real machine / is one, a plain
    # directory under chroot is not.
    mount --bind "$runroot" "$runroot"
    mount -t proc proc "$runroot/proc"
    mount --rbind /sys "$runroot/sys"
    mount --make-rslave "$runroot/sys"
    mount --rbind /dev "$runroot/dev"
    mount --make-rslave "$runroot/dev"
    mount -t tmpfs -o mode=0755 tmpfs "$runroot/run"
    mount --bind "$rustup_host" "$runroot/root/.rustup"
    mount -o remount,bind,ro "$runroot/root/.rustup"
    mount --bind "$cargo_bin_host" "$runroot/root/.cargo/bin"
    mount -o remount,bind,ro "$runroot/root/.cargo/bin"
    if [ "$warm" = 1 ]; then
        mkdir -p "$cache/cargo-registry" "$cache/target" "$runroot/root/.cargo/registry" "$runroot/root/faas/target"
        mount --bind "$cache/cargo-registry" "$runroot/root/.cargo/registry"
        mount --bind "$cache/target" "$runroot/root/faas/target"
    fi
    hostname faas-cleanroom
    set +e
    if [ -r "$runroot/sys/fs/cgroup/cgroup.controllers" ] || [ -d "$runroot/sys/fs/cgroup/memory" ]; then
        say "cgroups visible in the root: $(ls "$runroot/sys/fs/cgroup" | tr '\n' ' ')"
    else
        say "ERROR: /sys/fs/cgroup not visible in the root"
        printf 'mounts\t1\t0\n' >>"$status"
        exit 1
    fi

    envs=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb LANG=C.UTF-8
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    for v in FAAS_LOCAL_LISTEN FAAS_LOCAL_ETCD_PORT FAAS_LOCAL_REGISTRY_PORT FAAS_ENDPOINT; do
        [ -z "${!v:-}" ] || envs+=("$v=${!v}")
    done
    # A root login shell on the new machine, in the clone.
    inroot() { env -i "${envs[@]}" chroot "$runroot" /bin/bash -lc "cd /root/faas && $1"; }
    save_logs() {
        local d=$logdir/faas-logs-$1
        if [ -d "$runroot/var/lib/faas-local/logs" ]; then
            mkdir -p "$d" && cp -a "$runroot/var/lib/faas-local/logs/." "$d/" 2>/dev/null
        fi
    }
    failed=0
    step() { # name timeout command
        local name=$1 limit=$2 cmd=$3 t0 rc
        say "===== step $name: $cmd  ($(date -u +%T))"
        t0=$SECONDS
        # Every line gets the UTC time, so the phases inside a step are timed too.
        timeout --kill-after=30 "$limit" env -i "${envs[@]}" chroot "$runroot" /bin/bash -lc "cd /root/faas && $cmd" 2>&1 |
            while IFS= read -r line; do printf '%(%T)T %s\n' -1 "$line"; done
        rc=${PIPESTATUS[0]}
        printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$status"
        say "===== step $name: exit $rc after $((SECONDS - t0))s"
        return $rc
    }
    inroot 'echo "rustc: $(rustc --version 2>&1) ; cargo: $(command -v cargo) ; CARGO_HOME: $(ls -A ~/.cargo | tr "\n" " ")"'
    if [ "$mode" = full ]; then
        step tests/run.sh 10800 'tests/run.sh' || failed=1
        save_logs run.sh
    else
        if step up.sh 7200 'deploy/local/up.sh'; then
            step smoke.sh 1800 '../shared/acceptance/smoke.sh' || failed=1
        else
            failed=1
        fi
        save_logs before-down
        step down.sh 600 'deploy/local/down.sh --purge' || failed=1
        # What a purge should leave: no faas process, no mount under FAAS_HOME.
        # (the namespace's own /proc, mounted in the root; mount points as
        # the host names them)
        left=
        for p in "$runroot"/proc/[0-9]*; do
            [ "${p##*/}" = 1 ] && continue
            c=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
            case $c in *faas-* | *containerd* | *etcd* | *docker-registry* | *crun* | *runc*) left="$left [${p##*/}] $c" ;; esac
        done
        mnts=$(grep -c " $runroot/var/lib/faas-local" /proc/self/mountinfo)
        say "after down.sh --purge: processes left:${left:- none}; mounts under FAAS_HOME: $mnts"
        say "left in the root: $(cd "$runroot" && du -sh --one-file-system var/lib/faas-local var/cache/faas usr/local/bin/faasctl 2>&1 | tr '\n' ';')"
    fi
    exit $failed
fi

# ---------------------------------------------------------------------------
# Outer part: on the host.
# ---------------------------------------------------------------------------
full=0 cold=0 rebuild=0 keep=0 stream=0 commit=
for arg in "$@"; do
    case $arg in
    --full) full=1 ;;
    --cold) cold=1 ;;
    --rebuild-base) rebuild=1 ;;
    --keep) keep=1 ;;
    --stream) stream=1 ;;
    -h | --help) sed -n '2,50p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) commit=$arg ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 2; }
commit=$(git -C "$repo_host" rev-parse --verify "${commit:-HEAD}^{commit}") || { echo "no commit ${commit:-HEAD} in $repo_host" >&2; exit 2; }

mkdir -p "$top/logs"
exec {lockfd}>"$top/.lock"
flock -n "$lockfd" || { echo "another clean-room.sh is running" >&2; exit 2; }
renice -n 19 -p $$ >/dev/null 2>&1 || true
ionice -c 3 -p $$ >/dev/null 2>&1 || true

logdir=$top/logs/$(date -u +%Y%m%dT%H%M%SZ)-${commit:0:10}
mkdir -p "$logdir"
ln -sfn "$logdir" "$top/logs/latest"
log=$logdir/run.log
: >"$logdir/steps.tsv"
exec 3>&1
if [ "$stream" = 1 ]; then
    # fd 3 (the step lines) is stdout already: the notes would show twice.
    exec 3>/dev/null
    exec > >(tee -a "$log") 2>&1
else
    exec >>"$log" 2>&1
fi
note() { echo "[clean-room] $*"; echo "[clean-room] $*" >&3; }

ns_pid=
# Processes whose root directory is the run dir or below it.
root_pids() {
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        case $r in "$runroot" | "$runroot"/*) echo "${p#/proc/}" ;; esac
    done
}
cleanup() {
    local pids i m
    if [ -n "$ns_pid" ] && kill -0 "$ns_pid" 2>/dev/null; then
        # unshare --fork ignores SIGTERM and SIGINT: SIGKILL it. --kill-child:
        # its death SIGKILLs the namespace's init, and with it every process
        # of the PID namespace.
        kill -KILL "$ns_pid" 2>/dev/null
        wait "$ns_pid" 2>/dev/null
    fi
    for i in 1 2 3 4 5 6 7 8 9 10; do
        pids=$(root_pids)
        [ -n "$pids" ] || break
        echo "[clean-room] killing processes still rooted in $runroot: $pids"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null
        sleep 0.5
    done
    # Host-side mounts under the run dir (none expected: the namespace had its
    # own), deepest first.
    awk -v d="$runroot" '$5 == d || index($5, d "/") == 1 { print length($5) " " $5 }' /proc/self/mountinfo |
        sort -rn | cut -d' ' -f2- | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" && echo "[clean-room] unmounted $m"
    done
    if [ "$keep" = 0 ] && ! grep -q " $runroot" /proc/self/mountinfo; then
        rm -rf --one-file-system "$runroot"
    fi
}
trap cleanup EXIT
trap 'note "FAIL interrupted (log: $log)"; exit 130' INT TERM HUP

t_start=$SECONDS
timed() { # name command...: runs a host-side preparation step
    local name=$1 t0=$SECONDS rc
    shift
    "$@"
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$logdir/steps.tsv"
    note "$name: exit $rc, $((SECONDS - t0))s"
    return $rc
}
fail() {
    note "FAIL $1 (log: $log)"
    exit 1
}

note "commit $commit ($(git -C "$repo_host" log -1 --format=%s "$commit" | cut -c1-80))"
note "log $log"

# 1. the base root, once.
make_base() {
    rm -rf --one-file-system "$base.tmp" "$base"
    command -v mmdebstrap >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap || return 1
    mmdebstrap --variant=minbase --include=ca-certificates,git,python3,curl bookworm "$base.tmp" &&
        mv "$base.tmp" "$base"
}
if [ "$rebuild" = 1 ] || [ ! -x "$base/bin/bash" ]; then
    timed mmdebstrap make_base || fail mmdebstrap
fi

# 2. a fresh copy: whatever a previous run left is cleaned up first.
cleanup
[ ! -e "$runroot" ] || rm -rf --one-file-system "$runroot"
[ ! -e "$runroot" ] || fail "could not remove the previous $runroot"
timed copy-root cp -a "$base" "$runroot" || fail copy-root

# 3. CA certificates and DNS.
prepare_root() {
    cp -a /usr/local/share/ca-certificates/. "$runroot/usr/local/share/ca-certificates/" &&
        chroot "$runroot" update-ca-certificates &&
        cp /etc/resolv.conf "$runroot/etc/resolv.conf" &&
        echo faas-cleanroom >"$runroot/etc/hostname" &&
        # /etc/hosts as Debian's installer writes it (minbase has none: no
        # name, not even localhost, resolves without it).
        printf '127.0.0.1\tlocalhost\n127.0.1.1\tfaas-cleanroom\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
            >"$runroot/etc/hosts" || return 1
    # 4. rustup as its installer leaves a machine: toolchains and proxies
    # (bind-mounted later), ~/.cargo/env, the profile lines.
    mkdir -p "$runroot/root/.rustup" "$runroot/root/.cargo/bin" &&
        cp /root/.cargo/env "$runroot/root/.cargo/env" &&
        echo '. "$HOME/.cargo/env"' >>"$runroot/root/.profile" &&
        echo '. "$HOME/.cargo/env"' >>"$runroot/root/.bashrc" || return 1
    # 5. the project and its sibling shared/.
    git clone -q "$repo_host" "$runroot/root/faas" &&
        git -C "$runroot/root/faas" checkout -q "$commit" &&
        { [ ! -d "$shared_host" ] || cp -a "$shared_host" "$runroot/root/shared"; }
}
timed prepare-root prepare_root || fail prepare-root

# Caches.
warm=1
if [ "$cold" = 1 ]; then
    rm -rf --one-file-system "$cache"
fi
if [ -d "$cache/cargo-registry" ] && [ -n "$(ls -A "$cache/cargo-registry" 2>/dev/null)" ]; then
    note "cargo registry cache and target dir: kept from earlier runs ($cache)"
else
    note "cargo registry cache and target dir: cold (filled for later runs in $cache)"
fi

# Ports.
port_busy() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }
if port_busy 7070 || port_busy 12379 || port_busy 12380 || port_busy 15000; then
    export FAAS_LOCAL_LISTEN=127.0.0.1:17171 FAAS_LOCAL_ETCD_PORT=22479 FAAS_LOCAL_REGISTRY_PORT=25100
    note "default ports busy on the host: using 17171, 22479/22480, 25100"
    for p in 17171 22479 22480 25100; do port_busy $p && fail "port $p is busy too"; done
fi

# 6. the run, in its own PID/mount/UTS namespaces.
mode=smoke
[ "$full" = 1 ] && mode=full
note "running ($mode) in $runroot, started $(date -u +%T) UTC"
export runroot cache rustup_host cargo_bin_host
unshare --pid --fork --kill-child --mount --uts --propagation private -- \
    "$(readlink -f "$0")" __inner "$mode" "$logdir" "$warm" &
ns_pid=$!
wait "$ns_pid"
rc=$?
ns_pid=

echo
echo "[clean-room] steps (name, exit code, seconds):"
cat "$logdir/steps.tsv"
column -t "$logdir/steps.tsv" >&3 2>/dev/null || cat "$logdir/steps.tsv" >&3
note "total $((SECONDS - t_start))s"
first_failed=$(awk -F'\t' '$2 != 0 { print $1; exit }' "$logdir/steps.tsv")
if [ "$rc" -eq 0 ] && [ -z "$first_failed" ]; then
    note "PASS (log: $log)"
    exit 0
fi
fail "${first_failed:-namespace (exit $rc)}"
