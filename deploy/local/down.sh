#!/usr/bin/env bash
# Stops the single-machine cluster started by deploy/local/up.sh.
#
#   deploy/local/down.sh            stop everything, keep state (FAAS_HOME)
#   deploy/local/down.sh --purge    also delete FAAS_HOME (state, images, logs)
#
# Order: the agent first (it tears down its containers), then the control
# plane, then containerd together with whatever its shims still run and the
# mounts left under FAAS_HOME, then the registry and etcd.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/../..

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=deploy/lib/proc.sh
. "$repo/deploy/lib/proc.sh"

purge=0
for arg in "$@"; do
    case $arg in
    --purge) purge=1 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
    esac
done

FAAS_HOME=${FAAS_HOME:-/var/lib/faas-local}
run=$FAAS_HOME/run
socket=$run/containerd.sock
[ "$(id -u)" -eq 0 ] || { echo "[faas] ERROR: run as root" >&2; exit 1; }
if [ ! -d "$FAAS_HOME" ]; then
    echo "[faas] nothing to stop: $FAAS_HOME does not exist" >&2
    exit 0
fi

faas_stop faas-gateway "$run/gateway.pid" 30
faas_stop faas-agent "$run/agent.pid" 60
faas_stop faas-controlplane "$run/controlplane.pid" 30
# containerd's shims are not its children and survive it: kill them and the
# containers below them, then containerd, then release their mounts.
faas_kill_matching "-address $socket"
faas_stop containerd "$run/containerd.pid" 30
faas_unmount_under "$FAAS_HOME"
rm -f "$socket" "$socket.ttrpc"
faas_stop docker-registry "$run/registry.pid" 20
faas_stop etcd "$run/etcd.pid" 30
# A daemon of this FAAS_HOME whose pid file was lost still names it.
faas_kill_matching "--state-dir $FAAS_HOME/agent"
faas_kill_matching "containerd --config $FAAS_HOME/containerd/config.toml"
faas_kill_matching "docker-registry serve $FAAS_HOME/registry.yml"
faas_kill_matching "--data-dir $FAAS_HOME/etcd"

if [ $purge -eq 1 ]; then
    # The faasctl context up.sh wrote would name a token file that is gone.
    ctl="$FAAS_HOME/bin/faasctl"
    if [ -x "$ctl" ] && "$ctl" context ls -o json 2>/dev/null |
        python3 -c 'import json,sys; sys.exit(0 if any(c.get("name") == "local" and (c.get("token_file") or "").startswith(sys.argv[1] + "/") for c in json.load(sys.stdin)) else 1)' "$FAAS_HOME"; then
        "$ctl" context rm local >/dev/null 2>&1 && echo "[faas] removed faasctl context \"local\"" >&2
    fi
    faas_unmount_under "$FAAS_HOME"
    if [ "$(readlink /usr/local/bin/faasctl 2>/dev/null)" = "$FAAS_HOME/bin/faasctl" ]; then
        rm -f /usr/local/bin/faasctl
    fi
    rm -rf --one-file-system "$FAAS_HOME"
    echo "[faas] removed $FAAS_HOME" >&2
fi
echo "[faas] down" >&2
