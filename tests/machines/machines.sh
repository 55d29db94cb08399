#!/usr/bin/env bash
# Debian 12 "machines" booted with systemd as PID 1 by systemd-nspawn on one
# host, on a private bridge in a network namespace of their own: what
# tests/machines/cluster.sh installs faas on. Needs root, systemd-container
# and mmdebstrap on the host (installed if missing). Everything lives under
# $FAASM_DIR [default: /var/tmp/faas-machines]. Sourced by cluster.sh, or
# run by hand:
#
#   machines.sh template              # the machines' root (once): Debian 12
#                                     # minbase + systemd, with the packages
#                                     # install.sh wants in apt's cache only
#                                     # (the machines have no network out)
#   machines.sh create NAME IP        # overlay copy of the template (IP: 10.77.0.X)
#   machines.sh start NAME            # boot it in the background
#   machines.sh wait NAME             # until systemd reports running/degraded
#   machines.sh exec NAME CMD...      # run CMD inside (nsenter into all namespaces)
#   machines.sh stop NAME             # orderly poweroff, then cgroup/mount cleanup
#   machines.sh destroy NAME          # stop + delete its files
#   machines.sh net-up | net-down     # the private netns "faasm" with bridge br0
#   machines.sh cleanup               # stop and delete everything it started
set -euo pipefail

FAASM_DIR=${FAASM_DIR:-/var/tmp/faas-machines}
NETNS=faasm
BRIDGE=br0
SUBNET=10.77.0
CG=faasm # our own subtree in every host cgroup hierarchy (v1 + name=systemd + unified)
TEMPLATE=$FAASM_DIR/template
# What deploy/install.sh installs, by role: in the template's apt cache
# (downloaded, not installed), so that the machines install them offline.
INSTALL_PACKAGES=etcd-server,etcd-client,docker-registry,containerd,runc,crun,containernetworking-plugins,nftables

log() { echo "[faasm] $*" >&2; }
mdir() { echo "$FAASM_DIR/machines/$1"; }

cmd_template() {
    mkdir -p "$FAASM_DIR"
    if [ ! -x "$TEMPLATE/bin/systemctl" ]; then
        command -v mmdebstrap >/dev/null ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >/dev/null
        command -v systemd-nspawn >/dev/null ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd-container >/dev/null
        rm -rf --one-file-system "$TEMPLATE.tmp"
        # apt's lists and cache are kept (--skip): the packages are there,
        # not installed; install.sh's apt-get install finds them offline.
        mmdebstrap --variant=minbase --skip=cleanup/apt \
            --include=systemd,systemd-sysv,dbus,libpam-systemd,iproute2,ca-certificates \
            --customize-hook="chroot \"\$1\" apt-get install -y -qq --download-only --no-install-recommends ${INSTALL_PACKAGES//,/ }" \
            bookworm "$TEMPLATE.tmp"
        mv "$TEMPLATE.tmp" "$TEMPLATE"
    fi
    # (idempotent from here on)
    # Extra CAs (HTTPS through the egress proxy), as the clean-room notes say.
    cp /usr/local/share/ca-certificates/*.crt "$TEMPLATE/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$TEMPLATE" update-ca-certificates >/dev/null
    # Each machine gets its own machine-id at create time (an empty file makes
    # nspawn fail: "Failed to read machine ID from container image").
    rm -f "$TEMPLATE/etc/machine-id" "$TEMPLATE/var/lib/dbus/machine-id"
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

# Sourced (by cluster.sh): the functions only.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

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
cleanup) cmd_cleanup ;;
*) sed -n '2,21p' "$0"; exit 2 ;;
esac
