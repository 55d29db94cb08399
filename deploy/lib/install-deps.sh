# shellcheck shell=bash
# Installs what faas needs on Debian 12, skipping what is already there.
# Sourced by deploy/local/up.sh and tests/run.sh:
#   . deploy/lib/install-deps.sh
#   faas_install_deps     # Debian packages (needs root)
#   faas_ensure_cargo     # cargo on PATH (rustup's stable toolchain if missing)
#   faas_select_oci_runtime  # prints crun if it runs containers here, else runc

# Debian packages: the real dependencies (containerd, runc, etcd, registry),
# what the build needs (protoc for the gRPC crates, a C toolchain), and what
# runtimes/build.sh needs to make the runtime images offline-reproducibly,
# and what calls with egress need: the CNI bridge plugin, nftables,
# iproute2 (ip, bridge); and what the Python client library needs to be
# built, checked against the proto and tested (gRPC and protobuf runtimes,
# setuptools and wheel, the gRPC Python code generator).
FAAS_DEBIAN_PACKAGES=(
    containerd runc crun etcd-server docker-registry
    protobuf-compiler libprotobuf-dev build-essential pkg-config
    mmdebstrap busybox-static python3 ca-certificates
    nftables containernetworking-plugins iproute2
    python3-grpcio python3-protobuf python3-setuptools python3-wheel protobuf-compiler-grpc
)

faas_log() { echo "[faas] $*" >&2; }

faas_package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

faas_install_deps() {
    local missing=() pkg
    for pkg in "${FAAS_DEBIAN_PACKAGES[@]}"; do
        faas_package_installed "$pkg" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        faas_log "missing Debian packages: ${missing[*]} (run as root to install them)"
        return 1
    fi
    faas_log "installing Debian packages: ${missing[*]}"
    # The packages' own services (etcd on 2379, registry on 5000, the system
    # containerd) must not start: faas runs private instances. policy-rc.d
    # exit 101 tells invoke-rc.d / deb-systemd-invoke "not now".
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || rc=$?
    if [ $rc -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
    fi
    if [ $own_policy -eq 1 ]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    if [ $rc -ne 0 ]; then
        faas_log "apt-get failed ($rc) installing: ${missing[*]}"
        return $rc
    fi
}

faas_ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -f "${HOME:-/root}/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "${HOME:-/root}/.cargo/env"
    fi
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    # Debian 12's rustc (1.63) is older than the workspace's rust-version.
    faas_log "cargo not found: installing rustup's stable toolchain"
    faas_package_installed curl || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl ca-certificates
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --default-toolchain stable --no-modify-path || {
        faas_log "could not install rustup (no network?): install a Rust toolchain >= 1.85 and retry"
        return 1
    }
    # shellcheck disable=SC1091
    . "${HOME:-/root}/.cargo/env"
}

# Prints the OCI runtime the agent should use here: crun (a C runtime: a
# container's create/start/delete in a fraction of runc's CPU, see
# docs/benchmarks.md) when it runs a container on this machine, else runc.
# crun refuses a hybrid cgroup hierarchy whose cgroup2 mount still holds
# controllers (a controller no v1 hierarchy was mounted for, e.g. hugetlb on a
# host without systemd); as root, those v1 hierarchies are mounted first, as
# systemd's own hybrid layout does.
faas_select_oci_runtime() {
    command -v crun >/dev/null 2>&1 || { echo runc; return 0; }
    local unified=/sys/fs/cgroup/unified ctl
    if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = tmpfs ] && [ -r "$unified/cgroup.controllers" ] &&
        [ "$(id -u)" -eq 0 ]; then
        for ctl in $(cat "$unified/cgroup.controllers"); do
            mountpoint -q "/sys/fs/cgroup/$ctl" && continue
            if mkdir -p "/sys/fs/cgroup/$ctl" 2>/dev/null &&
                mount -t cgroup -o "$ctl" cgroup "/sys/fs/cgroup/$ctl" 2>/dev/null; then
                faas_log "mounted the cgroup v1 $ctl hierarchy (crun needs the hybrid cgroup2 mount without controllers)"
            fi
        done
    fi
    # The proof: crun runs a busybox container here.
    local probe rc=1
    probe=$(mktemp -d /tmp/faas-crun-probe.XXXXXX) || { echo runc; return 0; }
    if command -v busybox >/dev/null 2>&1 && mkdir -p "$probe/bundle/rootfs" &&
        cp "$(command -v busybox)" "$probe/bundle/rootfs/busybox" &&
        (cd "$probe/bundle" && crun spec >/dev/null 2>&1) &&
        sed -i 's/"terminal": true/"terminal": false/; s|"sh"|"/busybox", "true"|' "$probe/bundle/config.json"; then
        timeout 20 crun --root "$probe/state" run --bundle "$probe/bundle" "faas-probe-$$" >"$probe/out" 2>&1
        rc=$?
    fi
    if [ $rc -eq 0 ]; then
        echo crun
    else
        faas_log "crun cannot run containers here ($(head -c 300 "$probe/out" 2>/dev/null)): using runc"
        echo runc
    fi
    rm -rf "$probe"
}
