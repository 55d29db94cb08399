#!/usr/bin/env bash
# Feasibility prototype: Debian 12 "machines" booted with systemd as PID 1 by
# systemd-nspawn on one host, on a private bridge, each running containerd
# with runc or crun. A probe, not product code. Needs root, systemd-container
# and mmdebstrap on the host. Everything lives under $FAASM_DIR.
#
#   proto.sh template               # mmdebstrap the template root (once)
#   proto.sh create NAME IP         # overlay copy of the template (IP: 10.77.0.X)
#   proto.sh start NAME             # boot it in the background
#   proto.sh wait NAME              # until systemd reports running/degraded
#   proto.sh exec NAME CMD...       # run CMD inside (nsenter into all namespaces)
#   proto.sh stop NAME              # orderly poweroff, then cgroup/mount cleanup
#   proto.sh destroy NAME           # stop + delete its files
#   proto.sh net-up | net-down      # the private netns "faasm" with bridge br0
#   proto.sh demo                   # the whole probe: 2 machines, containers, TCP
#   proto.sh cleanup                # stop everything this script started
set -euo pipefail

FAASM_DIR=${FAASM_DIR:-/work/machines-proto}
NETNS=faasm
BRIDGE=br0
SUBNET=10.77.0
CG=faasm # our own subtree in every host cgroup hierarchy (v1 + name=systemd + unified)
TEMPLATE=$FAASM_DIR/template
IMAGE_TAR=${IMAGE_TAR:-/var/cache/faas/runtimes/python3-9f8d69b64ce65c9455c0.tar}

log() { echo "[faasm] $*" >&2; }
mdir() { echo "$FAASM_DIR/machines/$1"; }

cmd_template() {
    mkdir -p "$FAASM_DIR"
    [ -d "$TEMPLATE" ] || mmdebstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,libpam-systemd,iproute2,containerd,runc,crun,ca-certificates,busybox-static \
        bookworm "$TEMPLATE"
    # (idempotent from here on)
    # Extra CAs (HTTPS through the egress proxy), as the clean-room notes say.
    cp /usr/local/share/ca-certificates/*.crt "$TEMPLATE/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$TEMPLATE" update-ca-certificates >/dev/null
    # Each machine gets its own machine-id at create time (an empty file makes
    # nspawn fail: "Failed to read machine ID from container image").
    rm -f "$TEMPLATE/etc/machine-id" "$TEMPLATE/var/lib/dbus/machine-id"
    # containerd is started explicitly (boot-time numbers without it).
    rm -f "$TEMPLATE/etc/systemd/system/multi-user.target.wants/containerd.service"
    mkdir -p "$TEMPLATE/etc/systemd/system/sockets.target.wants"
    ln -sf /lib/systemd/system/systemd-networkd.service "$TEMPLATE/etc/systemd/system/multi-user.target.wants/"
    ln -sf /lib/systemd/system/systemd-networkd.socket "$TEMPLATE/etc/systemd/system/sockets.target.wants/"
    # nspawn mounts the v1 controllers read-only (no user namespace): runc then
    # fails "mkdir /sys/fs/cgroup/cpuset/faas/t1: read-only file system".
    # They are the machine's own subtree (cgroup namespace), so make them rw.
    cat >"$TEMPLATE/etc/systemd/system/cgroup-rw.service" <<'EOF'
[Unit]
Description=Make the cgroup v1 controllers writable (for runc/crun)
DefaultDependencies=no
After=local-fs.target
Before=containerd.service sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for c in /sys/fs/cgroup/*; do case $c in */unified|*/systemd) ;; *) mount -o remount,bind,rw $c;; esac; done'

[Install]
WantedBy=sysinit.target
EOF
    mkdir -p "$TEMPLATE/etc/systemd/system/sysinit.target.wants"
    ln -sf ../cgroup-rw.service "$TEMPLATE/etc/systemd/system/sysinit.target.wants/cgroup-rw.service"
}

cmd_create() {
    local name=$1 ip=$2 d
    d=$(mdir "$name")
    [ -d "$d" ] && { log "$name exists"; return 0; }
    mkdir -p "$d/upper" "$d/work" "$d/root" "$d/containerd"
    mount -t overlay "faasm-$name" -o "lowerdir=$TEMPLATE,upperdir=$d/upper,workdir=$d/work" "$d/root"
    systemd-id128 new >"$d/root/etc/machine-id"
    echo "$name" >"$d/root/etc/hostname"
    mkdir -p "$d/root/etc/systemd/network"
    cat >"$d/root/etc/systemd/network/10-host0.network" <<EOF
[Match]
Name=host0
[Network]
Address=$ip/24
LinkLocalAddressing=no
EOF
    echo "$ip" >"$d/ip"
}

# Moves the calling shell into $CG/NAME in every hierarchy, so nspawn's
# supervisor/payload cgroups and the machine's cgroup namespace are its own
# (else nspawn uses /payload and /supervisor at the host's roots, shared by
# every machine, and runc inside writes into the host's /faas cgroups).
enter_cgroups() {
    local name=$1 h f
    for h in /sys/fs/cgroup/*/; do
        mkdir -p "$h$CG/$name"
        if [ -f "${h}cpuset.cpus" ]; then
            for f in cpuset.cpus cpuset.mems; do
                cat "$h$f" >"$h$CG/$f"
                cat "$h$f" >"$h$CG/$name/$f"
            done
        fi
        echo $BASHPID >"$h$CG/$name/cgroup.procs"
    done
}

remove_cgroups() {
    local name=$1 h
    for h in /sys/fs/cgroup/*/; do
        [ -d "$h$CG/$name" ] || continue
        find "$h$CG/$name" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        rmdir "$h$CG" 2>/dev/null || true
    done
}

cmd_start() {
    local name=$1 d
    d=$(mdir "$name")
    ip netns list | grep -qw "$NETNS" || cmd_net_up
    # Plain nsenter --net (not `ip netns exec`, which remounts /sys and so hides
    # the cgroup mounts from nspawn): the veth's host side lands in the faasm
    # netns and is enslaved to br0 there.
    (
        enter_cgroups "$name"
        exec setsid nsenter --net=/run/netns/$NETNS \
            systemd-nspawn -D "$d/root" -M "$name" -b \
            --register=no --keep-unit --console=passive \
            --network-bridge=$BRIDGE \
            --system-call-filter=@keyring \
            --bind="$d/containerd:/var/lib/containerd" \
            --bind-ro=/var/cache/faas/runtimes \
            </dev/null >"$d/nspawn.log" 2>&1
    ) &
    echo $! >"$d/nspawn.pid"
}

leader() {
    local p
    p=$(cat "$(mdir "$1")/nspawn.pid")
    pgrep -P "$p" -x systemd | head -1
}

cmd_exec() {
    local name=$1
    shift
    nsenter -t "$(leader "$name")" -a "$@"
}

cmd_wait() {
    local name=$1 s i
    for i in $(seq 1 300); do
        if [ -n "$(leader "$name" 2>/dev/null)" ]; then
            s=$(cmd_exec "$name" systemctl is-system-running 2>/dev/null || true)
            case $s in running | degraded) echo "$s"; return 0 ;; esac
        fi
        sleep 0.1
    done
    log "$name did not boot"
    return 1
}

cmd_stop() {
    local name=$1 d p
    d=$(mdir "$name")
    if [ -f "$d/nspawn.pid" ]; then
        p=$(cat "$d/nspawn.pid")
        # SIGTERM to nspawn = orderly poweroff of the machine's systemd.
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p"
            for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$p" 2>/dev/null && kill -KILL "$p"
        fi
        rm -f "$d/nspawn.pid"
    fi
    remove_cgroups "$name"
    # /run is not a tmpfs here, so nspawn refuses to rm its propagate dir.
    rm -rf "/run/systemd/nspawn/propagate/$name"
}

cmd_destroy() {
    local name=$1 d
    d=$(mdir "$name")
    cmd_stop "$name"
    mountpoint -q "$d/root" && umount "$d/root"
    rm -rf "$d"
}

cmd_net_up() {
    ip netns list | grep -qw "$NETNS" && return 0
    ip netns add $NETNS
    ip -n $NETNS link set lo up
    ip -n $NETNS link add $BRIDGE type bridge
    ip -n $NETNS addr add $SUBNET.254/24 dev $BRIDGE
    ip -n $NETNS link set $BRIDGE up
}

cmd_net_down() {
    ip netns list | grep -qw "$NETNS" || return 0
    ip netns del $NETNS
}

cmd_cleanup() {
    local m
    for m in "$FAASM_DIR"/machines/*/; do
        [ -d "$m" ] && cmd_destroy "$(basename "$m")"
    done
    cmd_net_down
    rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn/locks /run/systemd/nspawn 2>/dev/null || true
}

cmd_demo() {
    local t0 t1 img=faas/runtimes/python3:9f8d69b64ce65c9455c0
    cmd_template
    cmd_net_up
    t0=$(date +%s%N); cmd_create ma $SUBNET.1; cmd_create mb $SUBNET.2; t1=$(date +%s%N)
    log "create 2 machines: $(((t1 - t0) / 1000000)) ms"
    t0=$(date +%s%N); cmd_start ma; cmd_start mb; cmd_wait ma; cmd_wait mb; t1=$(date +%s%N)
    log "boot 2 machines to running: $(((t1 - t0) / 1000000)) ms"
    cmd_exec ma systemctl start containerd
    cmd_exec ma ctr -n faas image import "/var/cache/faas/runtimes/$(basename "$IMAGE_TAR")" >/dev/null
    cmd_exec ma ctr -n faas run --rm --runtime io.containerd.runc.v2 $img t-runc python3 -c 'print("runc ok")'
    cmd_exec ma ctr -n faas run --rm --runc-binary /usr/bin/crun $img t-crun python3 -c 'print("crun ok")'
    cmd_exec mb systemd-run --unit=listen -p Type=simple busybox nc -ll -p 8080 -e /bin/echo hello-from-mb
    sleep 0.5
    cmd_exec ma bash -c "exec 3<>/dev/tcp/$SUBNET.2/8080; cat <&3"
    t0=$(date +%s%N); cmd_stop ma; t1=$(date +%s%N)
    log "stop ma (containerd running): $(((t1 - t0) / 1000000)) ms"
    t0=$(date +%s%N); cmd_stop mb; t1=$(date +%s%N)
    log "stop mb (idle): $(((t1 - t0) / 1000000)) ms"
    cmd_cleanup
}

c=${1:-}
shift || true
case $c in
template) cmd_template ;;
create) cmd_create "$@" ;;
start) cmd_start "$@" ;;
wait) cmd_wait "$@" ;;
exec) cmd_exec "$@" ;;
stop) cmd_stop "$@" ;;
destroy) cmd_destroy "$@" ;;
net-up) cmd_net_up ;;
net-down) cmd_net_down ;;
demo) cmd_demo ;;
cleanup) cmd_cleanup ;;
*) sed -n '2,17p' "$0"; exit 2 ;;
esac
