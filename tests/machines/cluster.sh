#!/usr/bin/env bash
# The multi-machine test: five Debian 12 machines booted with systemd as
# PID 1 (systemd-nspawn, tests/machines/machines.sh) on a private bridge,
# installed only through deploy/install.sh and a release bundle: three
# control-plane machines (etcd members, one of them the registry) and two
# agents. Under a steady load of calls (faas-load) it restarts every
# service on every machine, powers off and boots an agent's machine and
# the leader's, cuts the other agent's power, then upgrades every machine,
# one at a time, to the next
# release. It passes when no acknowledged call is lost or stuck and the
# units pass `systemd-analyze verify`; the gaps the load saw are printed
# per event.
#
#   tests/machines/cluster.sh [--from BUNDLE.tar.gz] [--to BUNDLE.tar.gz]
#                             [--rate 4] [--keep] [--out FILE]
#
# --to defaults to a bundle built from this tree (deploy/release.sh);
# "--to none" skips the upgrade (a quicker run, which proves less).
# --from to one built from the commit before HEAD (a git worktree in
# $FAASM_DIR/src-from; the build directory is shared). --keep leaves the
# machines running (tests/machines/machines.sh cleanup ends them). --out
# also writes the output there. FAAS_LOAD_BIN: a faas-load binary already
# built (else it is built here). As root on a Debian 12 host, about 15
# minutes once the bundles and the machines' template exist.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/machines/machines.sh
. "$repo/tests/machines/machines.sh"

from= to= rate=4 keep=0 out=
while [ $# -gt 0 ]; do
    case $1 in
    --from) from=$2; shift 2 ;;
    --to) to=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "cluster.sh: run as root" >&2; exit 1; }
if [ -n "$out" ]; then
    mkdir -p "$(dirname "$out")"
    exec > >(tee "$out") 2>&1
fi

say() { echo "[cluster $(date -u +%H:%M:%S)] $*"; }
die() { say "FAILED: $*"; exit 1; }
now_ms() { date +%s%3N; }

work=$FAASM_DIR/run
CPS=(cp1 cp2 cp3)
AGENTS=(ag1 ag2)
declare -A IP=([cp1]=$SUBNET.1 [cp2]=$SUBNET.2 [cp3]=$SUBNET.3 [ag1]=$SUBNET.11 [ag2]=$SUBNET.12)
ENDPOINTS=https://${IP[cp1]}:7070,https://${IP[cp2]}:7070,https://${IP[cp3]}:7070
ETCD_CLUSTER=cp1=${IP[cp1]},cp2=${IP[cp2]},cp3=${IP[cp3]}
load_pid=

finish() {
    local rc=$?
    [ -z "$load_pid" ] || kill "$load_pid" 2>/dev/null || true
    if [ "$keep" = 1 ]; then
        say "machines kept: tests/machines/machines.sh exec NAME … / cleanup"
    else
        cmd_cleanup >/dev/null 2>&1 || true
    fi
    exit $rc
}
trap finish EXIT

# --- bundles ---------------------------------------------------------------------
mkdir -p "$FAASM_DIR/bundles"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FAASM_DIR/target}
if [ -z "$to" ]; then
    say "building the release bundle of this tree"
    to=$("$repo/deploy/release.sh" --out "$FAASM_DIR/bundles" 2>"$FAASM_DIR/release-to.log") ||
        { tail -20 "$FAASM_DIR/release-to.log"; die "deploy/release.sh"; }
fi
if [ -z "$from" ]; then
    prev=$(git -C "$repo" rev-parse HEAD~1)
    say "building the release bundle of the commit before HEAD (${prev:0:7})"
    src=$FAASM_DIR/src-from
    git -C "$repo" worktree remove --force "$src" 2>/dev/null || rm -rf "$src"
    git -C "$repo" worktree add --detach "$src" "$prev" >/dev/null
    from=$("$src/deploy/release.sh" --out "$FAASM_DIR/bundles" 2>"$FAASM_DIR/release-from.log") ||
        { tail -20 "$FAASM_DIR/release-from.log"; die "release.sh of ${prev:0:7}"; }
fi
unpack() { # BUNDLE -> its directory under $FAASM_DIR/bundles
    local b=$1 name
    name=$(basename "$b" .tar.gz)
    [ -d "$FAASM_DIR/bundles/$name" ] || tar -xzf "$b" -C "$FAASM_DIR/bundles"
    echo "$FAASM_DIR/bundles/$name"
}
from_dir=$(unpack "$from")
from_version=$(cat "$from_dir/VERSION")
if [ "$to" = none ]; then
    to_dir=$from_dir to_version=$from_version
    say "release under test: $from_version (no upgrade)"
else
    to_dir=$(unpack "$to")
    to_version=$(cat "$to_dir/VERSION")
    [ "$from_version" != "$to_version" ] || die "both bundles are version $from_version"
    say "upgrade under test: $from_version -> $to_version"
fi

# The load program and the runtime image, from this tree.
say "building faas-load and the python3 runtime image"
load_bin=${FAAS_LOAD_BIN:-}
if [ -z "$load_bin" ]; then
    cargo build --release -q --manifest-path "$repo/Cargo.toml" -p faas-tests --bin faas-load
    load_bin=$CARGO_TARGET_DIR/release/faas-load
fi
archive=$("$repo/runtimes/build.sh" python3 | awk '$1 == "python3" { print $2 }')
[ -s "$archive" ] || die "runtimes/build.sh python3 gave no archive"

# --- machines ----------------------------------------------------------------------
cmd_template
cmd_cleanup >/dev/null 2>&1 || true
rm -rf "$work"
mkdir -p "$work"
cmd_net_up
t0=$(now_ms)
for m in "${CPS[@]}" "${AGENTS[@]}"; do cmd_create "$m" "${IP[$m]}"; done
for m in "${CPS[@]}" "${AGENTS[@]}"; do cmd_start "$m"; done
for m in "${CPS[@]}" "${AGENTS[@]}"; do cmd_wait "$m" >/dev/null || die "$m did not boot"; done
say "5 machines booted in $(($(now_ms) - t0)) ms"

# Runs CMD in machine M as root with a clean environment.
in_machine() {
    local m=$1
    shift
    cmd_exec "$m" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 "$@"
}
# Puts bundle directory DIR into machine M at /root/DIR's name.
give_bundle() {
    local m=$1 dir=$2
    rm -rf "$(mdir "$m")/root/root/$(basename "$dir")"
    cp -a "$dir" "$(mdir "$m")/root/root/"
}
declare -A INSTALL_ARGS
# install M DIR: install.sh of bundle DIR in machine M with M's arguments.
install_on() {
    local m=$1 dir=$2 t
    give_bundle "$m" "$dir"
    t=$(now_ms)
    # shellcheck disable=SC2086 # the arguments are words
    in_machine "$m" "/root/$(basename "$dir")/install.sh" ${INSTALL_ARGS[$m]} >"$work/install-$m.log" 2>&1 ||
        { tail -30 "$work/install-$m.log"; die "install.sh on $m"; }
    say "$m: installed $(cat "$dir/VERSION") ($(($(now_ms) - t)) ms)"
}

faasctl() {
    nsenter --net=/run/netns/$NETNS "$to_dir/bin/faasctl" --endpoint "$ENDPOINTS" \
        --ca-file "$work/ca.crt" --token-file "$work/admin.token" "$@"
}

# --- install: the first control plane forms etcd, the others join -----------------
INSTALL_ARGS[cp1]="--role control-plane --name cp1 --address ${IP[cp1]} --etcd-cluster $ETCD_CLUSTER"
install_on cp1 "$from_dir"
cp1_root=$(mdir cp1)/root
cp -r "$cp1_root/etc/faas/pki" "$work/pki"
for m in cp2 cp3; do
    rm -rf "$(mdir "$m")/root/root/pki"
    cp -r "$work/pki" "$(mdir "$m")/root/root/pki"
    INSTALL_ARGS[$m]="--role control-plane --name $m --address ${IP[$m]} --etcd-cluster $ETCD_CLUSTER --join-etcd --pki /root/pki --registry ${IP[cp1]}:5000"
    install_on "$m" "$from_dir"
done
state=/var/lib/private/faas-controlplane
for _ in $(seq 60); do [ -s "$cp1_root$state/admin.token" ] && break; sleep 1; done
cp "$cp1_root$state/admin.token" "$cp1_root$state/ca.crt" "$work/"
chmod 0600 "$work/admin.token"
in_machine cp1 etcdctl --endpoints "https://${IP[cp1]}:2379" --cacert /etc/faas/pki/etcd/ca.crt \
    --cert /etc/faas/pki/etcd/client.crt --key /etc/faas/pki/etcd/client.key member list -w table

faasctl runtime register --file "$repo/runtimes/python3/runtime.toml" --archive "$archive" >/dev/null ||
    die "registering the python3 runtime"
for m in "${AGENTS[@]}"; do
    # A join token serves one join.
    reply=$(faasctl node token create --ttl 30m -o json) || die "node token create"
    token=$(sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' <<<"$reply")
    ca_hash=$(sed -n 's/.*"ca_hash": *"\([^"]*\)".*/\1/p' <<<"$reply")
    INSTALL_ARGS[$m]="--role agent --name $m --address ${IP[$m]} --control-plane $ENDPOINTS --join $token --ca-hash $ca_hash --spots 4"
    install_on "$m" "$from_dir"
done

# Waits until `node ls` shows every agent connected (with VERSION if given).
wait_nodes() {
    local version=${1:-} i
    for i in $(seq 120); do
        if faasctl node ls -o json 2>/dev/null | python3 -c '
import json, sys
want, n = sys.argv[1], int(sys.argv[2])
nodes = [x for x in json.load(sys.stdin)["nodes"] if x["connected"] and (not want or x["version"] == want)]
sys.exit(0 if len(nodes) >= n else 1)' "$version" ${#AGENTS[@]}; then
            return 0
        fi
        sleep 1
    done
    faasctl node ls || true
    return 1
}
wait_nodes "$from_version" || die "the agents did not connect"
faasctl node ls

# Calls of half a second: every disturbance finds some running.
faasctl fn deploy load --runtime python3 --idempotent "$repo/tests/fixtures/py-sleep" >/dev/null 2>&1 ||
    die "deploying the load function"
faasctl invoke load --data '{"seconds": 0}' >/dev/null || die "the first call"

# --- the load, and what disturbs it -----------------------------------------------------
events=$work/events
: >"$events"
nsenter --net=/run/netns/$NETNS "$load_bin" --endpoints "$ENDPOINTS" --ca "$work/ca.crt" \
    --token-file "$work/admin.token" --function load --rate "$rate" --params '{"seconds": 0.5}' --stop-file "$work/stop" \
    --drain 180 --log "$work/load.jsonl" --events "$events" >"$work/load-report.txt" 2>"$work/load.err" &
load_pid=$!
settle() { sleep "${1:-10}"; }
# event LABEL CMD...: runs CMD, recording its start and end for the report.
event() {
    local label=$1 s
    shift
    s=$(now_ms)
    "$@" || die "$label"
    echo "$s $(now_ms) $label" >>"$events"
    say "$label: $(($(now_ms) - s)) ms"
    settle
}
settle 10

for m in "${CPS[@]}"; do
    event "$m: restart etcd" in_machine "$m" systemctl restart etcd
    event "$m: restart faas-controlplane" in_machine "$m" systemctl restart faas-controlplane
done
event "cp1: restart docker-registry" in_machine cp1 systemctl restart docker-registry
for m in "${AGENTS[@]}"; do
    # containerd's restart restarts the agent too (Requires=).
    event "$m: restart containerd" in_machine "$m" systemctl restart containerd
    event "$m: restart faas-agent" in_machine "$m" systemctl restart faas-agent
done

# Power-off and boot: until the machine's services serve again.
reboot_machine() {
    local m=$1
    cmd_stop "$m"
    cmd_start "$m"
    cmd_wait "$m" >/dev/null
}
event "ag1: power off and boot" reboot_machine ag1
wait_nodes || die "ag1 did not come back"
# A power cut: SIGKILL of the machine's PID 1 ends every process in it (its
# PID namespace), the calls' containers and shims with them; nothing is
# flushed or torn down. Its calls are lost with it and run again elsewhere
# (the load's function is idempotent).
cut_power() {
    local m=$1 p
    p=$(leader "$m")
    kill -KILL "$p"
    cmd_stop "$m"
    cmd_start "$m"
    cmd_wait "$m" >/dev/null
}
event "ag2: power cut and boot" cut_power ag2
wait_nodes || die "ag2 did not come back"
# node ls names the leader by its URL.
leader_url=$(faasctl node ls -o json | python3 -c 'import json, sys; print(json.load(sys.stdin)["leader"])')
leader=
for m in "${CPS[@]}"; do [ "$leader_url" != "https://${IP[$m]}:7070" ] || leader=$m; done
[ -n "$leader" ] || die "the leader '$leader_url' is none of the control-plane machines"
event "$leader (the leader): power off and boot" reboot_machine "$leader"
wait_nodes || die "the agents did not come back after $leader's reboot"

# --- rolling upgrade ---------------------------------------------------------------
if [ "$to" != none ]; then
    for m in "${CPS[@]}" "${AGENTS[@]}"; do
        event "$m: upgrade to $to_version" install_on "$m" "$to_dir"
    done
    wait_nodes "$to_version" || die "the agents do not all report $to_version"
fi
settle 5
touch "$work/stop"
say "load stopped; waiting for every acknowledged call to end"
load_rc=0
wait "$load_pid" || load_rc=$?
load_pid=
faasctl node ls

# --- the HTTP gateway install.sh set up on a control-plane machine ----------------
faasctl fn deploy hello --runtime python3 --http public "$repo/tests/fixtures/py-hello" >/dev/null ||
    die "deploying hello"
# shellcheck disable=SC2016 # expanded inside the machine
gateway_answer=$(in_machine cp1 bash -c '
    token=$(cat /var/lib/private/faas-controlplane/admin.token)
    exec 3<>/dev/tcp/127.0.0.1/8080
    printf "POST /function/hello HTTP/1.1\r\nHost: cp1\r\nAuthorization: Bearer %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}" "$token" >&3
    cat <&3' 2>&1) || true
if grep -q "^HTTP/1.1 200" <<<"$gateway_answer" && grep -q "hello world" <<<"$gateway_answer"; then
    say "cp1: faas-gateway answered 200 on 127.0.0.1:8080: $(tail -n 1 <<<"$gateway_answer")"
else
    echo "$gateway_answer"
    die "cp1: faas-gateway did not serve the call"
fi

# --- the units, as systemd sees them --------------------------------------------
verify_rc=0
for u in faas-controlplane.service:cp1 faas-gateway.service:cp1 faas-agent.service:ag1; do
    m=${u#*:}
    if in_machine "$m" systemd-analyze verify "/etc/systemd/system/${u%:*}" >"$work/verify-$m.log" 2>&1; then
        say "systemd-analyze verify ${u%:*} on $m: clean"
    else
        cat "$work/verify-$m.log"
        say "systemd-analyze verify ${u%:*} on $m: FAILED"
        verify_rc=1
    fi
done

echo
cat "$work/load-report.txt"
[ ! -s "$work/load.err" ] || { echo "faas-load stderr:"; cat "$work/load.err"; }
[ "$load_rc" = 0 ] || die "calls were lost or stuck (faas-load exit $load_rc)"
[ "$verify_rc" = 0 ] || die "systemd-analyze verify"
say "PASSED: $from_version -> $to_version on 5 machines, no acknowledged call lost or stuck"
