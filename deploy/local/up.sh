#!/usr/bin/env bash
# Brings up a complete single-machine faas cluster and runs an example call.
#
#   deploy/local/up.sh          (as root, on Debian 12)
#
# Installs what is missing (Debian packages, a Rust toolchain), builds and
# installs the binaries into $FAAS_HOME/bin (faasctl also in /usr/local/bin),
# starts PRIVATE instances of etcd, docker-registry and containerd on unusual
# ports and sockets (the system ones are never touched), then
# faas-controlplane and one faas-agent, registers the python3 and node
# runtimes, deploys deploy/local/examples/hello-python and invokes it.
#
# Everything speaks TLS and asks for credentials: the control plane makes the
# cluster CA and an admin token (in $FAAS_HOME/pki, root only), the agent
# joins with a join token, and faasctl gets a context "local" (made current)
# in ~/.config/faas/config.toml (or $FAASCTL_CONFIG), so that plain
# `faasctl ...` reaches this cluster as its admin.
#
# Idempotent: what is already running is left alone (a faas binary that
# changed is restarted), runtimes already registered from the same archive are
# skipped. Stop with deploy/local/down.sh [--purge].
#
# Settings (environment):
#   FAAS_HOME              state, logs, pid files, binaries   (/var/lib/faas-local)
#   FAAS_BIN_DIR           take prebuilt binaries from here instead of building
#   FAAS_LOCAL_LISTEN      control plane address               (127.0.0.1:7070)
#   FAAS_LOCAL_ETCD_PORT   etcd client port (peer: +1)         (12379)
#   FAAS_LOCAL_ETCD_QUOTA_BYTES  etcd space quota             (2 GiB)
#   FAAS_LOCAL_REGISTRY_PORT                                   (15000)
#   FAAS_LOCAL_GATEWAY     HTTP gateway address (plain HTTP,
#                          loopback only)                     (127.0.0.1:18080)
#   FAAS_LOCAL_METRICS_PORT  /metrics of the control plane on loopback;
#                          the agent's is the next port       (19464)
#   FAAS_LOCAL_NODE        node name                           (the hostname)
#   FAAS_LOCAL_SPOTS       spots of the agent                  (4)
#   FAAS_LOCAL_POLICY      broker policy                       (control plane default)
#   FAAS_LOCAL_RUNTIMES    runtimes to register                ("python3 node")
#   FAAS_LOCAL_OCI_RUNTIME runc or crun                        (crun if it runs here)
#   RUST_LOG               log level of the faas processes     (info)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/../..

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=deploy/lib/install-deps.sh
. "$repo/deploy/lib/install-deps.sh"
# shellcheck source=deploy/lib/build.sh
. "$repo/deploy/lib/build.sh"
# shellcheck source=deploy/lib/proc.sh
. "$repo/deploy/lib/proc.sh"

FAAS_HOME=${FAAS_HOME:-/var/lib/faas-local}
listen=${FAAS_LOCAL_LISTEN:-127.0.0.1:7070}
etcd_port=${FAAS_LOCAL_ETCD_PORT:-12379}
etcd_peer_port=$((etcd_port + 1))
# etcd's space quota: past it etcd refuses writes (NOSPACE) until the
# control plane has compacted, defragmented and disarmed it.
etcd_quota=${FAAS_LOCAL_ETCD_QUOTA_BYTES:-2147483648}
registry_port=${FAAS_LOCAL_REGISTRY_PORT:-15000}
metrics_port=${FAAS_LOCAL_METRICS_PORT:-19464}
gateway=${FAAS_LOCAL_GATEWAY:-127.0.0.1:18080}
spots=${FAAS_LOCAL_SPOTS:-4}
runtimes=${FAAS_LOCAL_RUNTIMES:-python3 node}
# Node names follow the API's naming rule: lowercase letters, digits, dashes.
node=${FAAS_LOCAL_NODE:-$(tr '[:upper:]' '[:lower:]' </proc/sys/kernel/hostname | tr -c 'a-z0-9\n' '-')}
export RUST_LOG=${RUST_LOG:-info}
export FAAS_ENDPOINT="https://$listen"

bin=$FAAS_HOME/bin
pki=$FAAS_HOME/pki
run=$FAAS_HOME/run
logs=$FAAS_HOME/logs
socket=$run/containerd.sock
etcd_url=https://127.0.0.1:$etcd_port
# The control plane beside etcd talks to it on a unix socket (plain gRPC,
# about half a millisecond less per write than etcd 3.4's TLS port). etcd
# names the socket by the URL's host:port, in its working directory: $run,
# root's alone, is what keeps others out.
etcd_socket_name=etcd.sock:0
etcd_socket_url=unix://$run/$etcd_socket_name
etcd_pki=$pki/etcd
registry_addr=127.0.0.1:$registry_port

die() { echo "[faas] ERROR: $*" >&2; exit 1; }
step() { echo "[faas] == $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "run as root (containerd, runc and overlay mounts need it)"
mkdir -p "$bin" "$run" "$logs"
# Nothing of the platform is for local users: state, sockets, logs and
# credentials are root's alone (FAAS_HOME itself stays traversable: faasctl
# is linked from /usr/local/bin into $bin).
chmod 0711 "$FAAS_HOME"
install -d -m 0700 "$pki" "$FAAS_HOME/etcd" "$FAAS_HOME/registry"
chmod 0700 "$run" "$logs" "$FAAS_HOME/etcd" "$FAAS_HOME/registry"
exec {FAAS_LOCK_FD}>"$run/up.lock"
flock -n "$FAAS_LOCK_FD" || die "another deploy/local/up.sh is running for FAAS_HOME=$FAAS_HOME"

# --- plain checks used as readiness probes ---------------------------------
# The scripts given to bash -c expand their own arguments.
# shellcheck disable=SC2016
# etcd takes only the control plane's certificate, so ask through it.
etcd_tls=(--etcd-ca "$etcd_pki/ca.crt" --etcd-cert "$etcd_pki/client.crt" --etcd-key "$etcd_pki/client.key")
etcd_healthy() { RUST_LOG=error "$bin/faas-controlplane" --etcd "$etcd_url" "${etcd_tls[@]}" etcd-health 2>/dev/null; }
# 401: it serves over TLS (checked against its own CA), and asks for a
# token (nothing gets in without one).
registry_healthy() {
    python3 - "$registry_port" "$pki/registry/tls-ca.crt" <<'PY'
import ssl, sys, urllib.error, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2])
try:
    urllib.request.urlopen(f"https://127.0.0.1:{sys.argv[1]}/v2/", context=context, timeout=3)
except urllib.error.HTTPError as e:
    sys.exit(0 if e.code == 401 else 1)
except Exception:
    sys.exit(1)
sys.exit(1)
PY
}
containerd_healthy() { [ -S "$socket" ] && ctr --address "$socket" version; }
# shellcheck disable=SC2016
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/${1%:*}/${1##*:}"' _ "$1"; }
node_connected() {
    "$bin/faasctl" node ls -o json | python3 -c '
import json, sys
want = sys.argv[1]
def walk(v):
    if isinstance(v, dict):
        if v.get("name") == want and v.get("connected") in (True, "true"):
            return True
        return any(walk(x) for x in v.values())
    if isinstance(v, list):
        return any(walk(x) for x in v)
    return False
sys.exit(0 if walk(json.load(sys.stdin)) else 1)' "$node"
}

# --- 1. dependencies and binaries ------------------------------------------
step "dependencies"
faas_install_deps
changed=()
if [ -n "${FAAS_BIN_DIR:-}" ]; then
    step "binaries from FAAS_BIN_DIR=$FAAS_BIN_DIR"
    for name in faas-controlplane faas-agent faasctl faas-init containerd-shim-faas-v1 faas-gateway; do
        [ -x "$FAAS_BIN_DIR/$name" ] || die "FAAS_BIN_DIR has no $name"
        if ! cmp -s "$FAAS_BIN_DIR/$name" "$bin/$name"; then
            cp "$FAAS_BIN_DIR/$name" "$bin/.$name.new" && mv -f "$bin/.$name.new" "$bin/$name"
            changed+=("$name")
        fi
    done
else
    step "building release binaries (cargo build --release)"
    faas_ensure_cargo
    faas_build_release "$repo"
    installed=$(faas_install_bins "$repo" "$bin") || die "installing the binaries into $bin"
    [ -z "$installed" ] || mapfile -t changed <<<"$installed"
fi
ln -sfn "$bin/faasctl" /usr/local/bin/faasctl
# containerd finds the runtime shim (containerd-shim-faas-v1) on its PATH.
export PATH="$bin:$PATH"
oci_runtime=${FAAS_LOCAL_OCI_RUNTIME:-$(faas_select_oci_runtime)}
[ ${#changed[@]} -eq 0 ] || echo "[faas] installed into $bin: ${changed[*]}" >&2
binary_changed() { local n; for n in "${changed[@]}"; do [ "$n" = "$1" ] && return 0; done; return 1; }

# --- 2. private etcd, registry, containerd ---------------------------------
step "etcd on $etcd_url"
# Mutual TLS with a CA of etcd's own (not the cluster CA, which signs the
# nodes' certificates): only the control plane's certificate opens etcd,
# which holds the cluster CA's key and the hashes of every token.
etcd_certs_written=$("$bin/faas-controlplane" etcd-certs --dir "$etcd_pki") ||
    die "making etcd's certificates in $etcd_pki"
if faas_running "$run/etcd.pid" etcd; then
    # An etcd of an older up.sh (no client certificates) or with certificates
    # just renewed: restarted on its data.
    if [ -n "$etcd_certs_written" ] ||
        ! tr '\0' ' ' <"/proc/$(cat "$run/etcd.pid")/cmdline" | grep -q -- '--client-cert-auth' ||
        ! tr '\0' ' ' <"/proc/$(cat "$run/etcd.pid")/cmdline" | grep -q -- "unix://$etcd_socket_name"; then
        faas_stop faas-controlplane "$run/controlplane.pid"
        faas_stop etcd "$run/etcd.pid" 30
    fi
fi
if ! faas_running "$run/etcd.pid" etcd; then
    # etcd 3.4 does not replace the socket a crashed etcd left: bind fails.
    rm -f "$run/$etcd_socket_name"
    faas_start etcd "$run/etcd.pid" "$logs/etcd.log" env --chdir="$run" etcd \
        --name faas-local --data-dir "$FAAS_HOME/etcd" \
        --listen-client-urls "$etcd_url,unix://$etcd_socket_name" --advertise-client-urls "$etcd_url" \
        --listen-peer-urls "https://127.0.0.1:$etcd_peer_port" \
        --initial-advertise-peer-urls "https://127.0.0.1:$etcd_peer_port" \
        --initial-cluster "faas-local=https://127.0.0.1:$etcd_peer_port" \
        --initial-cluster-state new \
        --cert-file "$etcd_pki/member.crt" --key-file "$etcd_pki/member.key" \
        --trusted-ca-file "$etcd_pki/ca.crt" --client-cert-auth \
        --peer-cert-file "$etcd_pki/member.crt" --peer-key-file "$etcd_pki/member.key" \
        --peer-trusted-ca-file "$etcd_pki/ca.crt" --peer-client-cert-auth \
        --auto-compaction-mode periodic --auto-compaction-retention 1h \
        --quota-backend-bytes "$etcd_quota" \
        --logger zap --log-level warn
fi
faas_wait etcd "$run/etcd.pid" "$logs/etcd.log" 60 etcd_healthy

step "registry on $registry_addr"
# Token authentication: the key the control plane signs registry tokens
# with, and its certificate for the registry. TLS: a CA of the registry's
# own and its server certificate, re-issued when due.
registry_written=$("$bin/faas-controlplane" registry-certs --dir "$pki/registry" --san 127.0.0.1) ||
    die "making the registry's token signer and TLS in $pki/registry"
sed -e "s|@REGISTRY_ROOT@|$FAAS_HOME/registry|g" -e "s|@REGISTRY_ADDR@|$registry_addr|g" \
    -e "s|@REGISTRY_TOKEN_CERT@|$pki/registry/token-signer.crt|g" \
    -e "s|@REGISTRY_TLS_CERT@|$pki/registry/tls.crt|g" \
    -e "s|@REGISTRY_TLS_KEY@|$pki/registry/tls.key|g" \
    "$repo/deploy/config/registry.yml" >"$FAAS_HOME/registry.yml.new"
if { ! cmp -s "$FAAS_HOME/registry.yml.new" "$FAAS_HOME/registry.yml" ||
    grep -q 'tls' <<<"$registry_written"; } &&
    faas_running "$run/registry.pid" docker-registry; then
    # Its configuration changed (an older up.sh's registry took anyone, or
    # spoke plain HTTP), or its certificate was re-issued (read at start).
    faas_stop docker-registry "$run/registry.pid" 20
fi
if grep -q 'tls-ca' <<<"$registry_written"; then
    # A new registry CA: the control plane and the agent read it at start.
    ! faas_running "$run/controlplane.pid" faas-controlplane ||
        faas_stop faas-controlplane "$run/controlplane.pid"
    ! faas_running "$run/agent.pid" faas-agent || faas_stop faas-agent "$run/agent.pid" 60
    # The agent keeps the CA it was handed; without it, it asks again.
    rm -f "$FAAS_HOME/agent/pki/registry-ca.crt"
fi
mv -f "$FAAS_HOME/registry.yml.new" "$FAAS_HOME/registry.yml"
if ! faas_running "$run/registry.pid" docker-registry; then
    faas_start docker-registry "$run/registry.pid" "$logs/registry.log" \
        docker-registry serve "$FAAS_HOME/registry.yml"
fi
faas_wait docker-registry "$run/registry.pid" "$logs/registry.log" 60 registry_healthy

step "containerd on $socket"
if ! faas_running "$run/containerd.pid" containerd; then
    # Left by a containerd that died: its shims (and their containers), its
    # mounts and its sockets. A new containerd cannot adopt them safely.
    faas_kill_matching "-address $socket"
    faas_unmount_under "$FAAS_HOME/containerd"
    rm -f "$socket" "$socket.ttrpc"
    mkdir -p "$FAAS_HOME/containerd"
    sed -e "s|@CONTAINERD_ROOT@|$FAAS_HOME/containerd/root|g" \
        -e "s|@CONTAINERD_STATE@|$FAAS_HOME/containerd/state|g" \
        -e "s|@CONTAINERD_SOCKET@|$socket|g" \
        "$repo/deploy/config/containerd.toml" >"$FAAS_HOME/containerd/config.toml"
    faas_start containerd "$run/containerd.pid" "$logs/containerd.log" \
        containerd --config "$FAAS_HOME/containerd/config.toml"
fi
faas_wait containerd "$run/containerd.pid" "$logs/containerd.log" 60 containerd_healthy

# --- 3. faas ----------------------------------------------------------------
step "faas-controlplane on $listen"
if faas_running "$run/controlplane.pid" faas-controlplane && binary_changed faas-controlplane; then
    faas_stop faas-controlplane "$run/controlplane.pid"
fi
if ! faas_running "$run/controlplane.pid" faas-controlplane; then
    # The key that seals secrets in etcd; it never enters etcd itself.
    "$bin/faas-controlplane" secrets-key --file "$pki/secrets.key" >/dev/null ||
        die "making the secrets key $pki/secrets.key"
    args=(--listen "$listen" --etcd "$etcd_socket_url,$etcd_url" "${etcd_tls[@]}" --registry "$registry_addr"
        --registry-token-dir "$pki/registry" --secrets-key-file "$pki/secrets.key" --name "$node"
        --bootstrap-token-file "$pki/admin.token" --ca-out "$pki/ca.crt"
        --metrics-listen "127.0.0.1:$metrics_port")
    [ -z "${FAAS_LOCAL_POLICY:-}" ] || args+=(--policy "$FAAS_LOCAL_POLICY")
    faas_start faas-controlplane "$run/controlplane.pid" "$logs/controlplane.log" \
        "$bin/faas-controlplane" "${args[@]}"
fi
faas_wait faas-controlplane "$run/controlplane.pid" "$logs/controlplane.log" 60 port_open "$listen"
# This script's own faasctl calls, and the context left for the user.
export FAAS_CA_FILE=$pki/ca.crt FAAS_TOKEN_FILE=$pki/admin.token
"$bin/faasctl" context set local >&2 || die "writing the faasctl context"

step "faas-agent, node $node, $spots spots"
if faas_running "$run/agent.pid" faas-agent && { binary_changed faas-agent || binary_changed faas-init; }; then
    faas_stop faas-agent "$run/agent.pid" 60
fi
if ! faas_running "$run/agent.pid" faas-agent; then
    mkdir -p "$FAAS_HOME/agent"
    if [ ! -s "$FAAS_HOME/agent/pki/node.crt" ]; then
        # Not joined yet (or its identity was lost): a short-lived join
        # token, given through the environment (not the command line, which
        # every local user can read).
        "$bin/faasctl" node rm "$node" >/dev/null 2>&1 || true
        join=$("$bin/faasctl" node token create --ttl 10m --description "deploy/local/up.sh" -o json) ||
            die "creating a join token"
        FAAS_JOIN_TOKEN=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$join")
        FAAS_CA_HASH=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["ca_hash"])' <<<"$join")
        export FAAS_JOIN_TOKEN FAAS_CA_HASH
    fi
    faas_start faas-agent "$run/agent.pid" "$logs/agent.log" \
        "$bin/faas-agent" --control-plane "https://$listen" --node "$node" --spots "$spots" \
        --containerd "$socket" --namespace faas --state-dir "$FAAS_HOME/agent" \
        --init-binary "$bin/faas-init" --metrics-listen "127.0.0.1:$((metrics_port + 1))" \
        --containerd-runtime io.containerd.faas.v1 --oci-runtime "$oci_runtime"
fi
unset FAAS_JOIN_TOKEN FAAS_CA_HASH
faas_wait faas-agent "$run/agent.pid" "$logs/agent.log" 60 node_connected

step "faas-gateway on http://$gateway"
if faas_running "$run/gateway.pid" faas-gateway && binary_changed faas-gateway; then
    faas_stop faas-gateway "$run/gateway.pid"
fi
if ! faas_running "$run/gateway.pid" faas-gateway; then
    # Plain HTTP on loopback only: callers' API tokens travel in its requests.
    case $gateway in
    127.* | localhost:* | "[::1]":*) ;;
    *) die "FAAS_LOCAL_GATEWAY=$gateway is not a loopback address (the local gateway speaks plain HTTP)" ;;
    esac
    faas_start faas-gateway "$run/gateway.pid" "$logs/gateway.log" \
        "$bin/faas-gateway" --listen "$gateway" --control-plane "https://$listen" --ca-file "$pki/ca.crt"
fi
faas_wait faas-gateway "$run/gateway.pid" "$logs/gateway.log" 30 port_open "$gateway"

# --- 4. runtimes and the example -------------------------------------------
step "runtimes: $runtimes"
# shellcheck disable=SC2086
built=$("$repo/runtimes/build.sh" $runtimes) || die "runtimes/build.sh failed"
registered=$("$bin/faasctl" runtime ls -o json) || die "faasctl runtime ls failed"
mkdir -p "$FAAS_HOME/runtimes"
while read -r name archive; do
    [ -n "$name" ] || continue
    stamp="$FAAS_HOME/runtimes/$name.registered"
    signature="$archive $(stat -c '%s %Y' "$archive")"
    if grep -q "\"$name\"" <<<"$registered"; then
        if [ "$(cat "$stamp" 2>/dev/null)" = "$signature" ]; then
            echo "[faas] runtime $name already registered from $archive" >&2
            continue
        fi
        "$bin/faasctl" runtime register --file "$repo/runtimes/$name/runtime.toml" --archive "$archive" --replace >&2 ||
            die "registering runtime $name"
    else
        "$bin/faasctl" runtime register --file "$repo/runtimes/$name/runtime.toml" --archive "$archive" >&2 ||
            die "registering runtime $name"
    fi
    echo "$signature" >"$stamp"
done <<<"$built"

step "example function hello-python"
"$bin/faasctl" fn deploy hello-python --runtime python3 "$repo/deploy/local/examples/hello-python" >&2 ||
    die "deploying the example function"
result=$("$bin/faasctl" invoke hello-python --data '{"name":"faas"}') || die "invoking hello-python: $result"

cat <<EOT

faas is up: control plane $FAAS_ENDPOINT, node $node with $spots spots.
  credentials:   faasctl context "local" (admin token $pki/admin.token, CA $pki/ca.crt)
  example call:  faasctl invoke hello-python --data '{"name":"faas"}'
  result:        $result
  nodes:         faasctl node ls
  over HTTP:     curl -H "Authorization: Bearer \$(cat $pki/admin.token)" http://$gateway/function/hello-python
  metrics:       curl http://127.0.0.1:$metrics_port/metrics (agent: $((metrics_port + 1)))
  logs:          $logs/
  stop:          deploy/local/down.sh [--purge]
EOT
