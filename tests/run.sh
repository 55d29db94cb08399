#!/usr/bin/env bash
# Builds faas and runs every test against the real stack, as CI does.
#
#   tests/run.sh            (as root, on Debian 12; about 15-20 minutes on 2 cores
#                            from scratch, much less with warm caches)
#
# Stages: install missing dependencies (deploy/lib/install-deps.sh), build the
# release binaries and faas-init, build the runtime images, run
# `cargo test --release --workspace` (unit tests and end-to-end tests, which
# start private stacks through the faas-tests harness), then the public smoke
# test: deploy/local/up.sh in a throwaway FAAS_HOME, ../shared/acceptance/smoke.sh
# if present, deploy/local/down.sh --purge.
#
# Exits non-zero on the first failing stage; prints a summary with each
# stage's duration. Nothing it started survives it.
#
# Settings (environment):
#   FAAS_TEST_THREADS   parallel tests in cargo test          (2)
#   FAAS_TEST_TIMEOUT   seconds allowed for cargo test, its build
#                       of the test binaries included         (1800)
#   FAAS_SMOKE_TIMEOUT  seconds allowed for the smoke test    (600)
#   FAAS_TEST_ARGS      extra arguments for cargo test, e.g. "-p faas-tests"
set -uo pipefail
# shellcheck source-path=SCRIPTDIR/..

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
# shellcheck source=deploy/lib/install-deps.sh
. deploy/lib/install-deps.sh
# shellcheck source=deploy/lib/build.sh
. deploy/lib/build.sh
# shellcheck source=deploy/lib/proc.sh
. deploy/lib/proc.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: run as root (the tests start containerd and run containers)" >&2
    exit 1
fi

work=$(mktemp -d /tmp/faas-ci.XXXXXX)
# Every stack the harness starts lives under $TMPDIR: the clean-up below
# finds whatever a crashed test left by that path.
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
export FAAS_BIN_DIR=$work/bin
smoke_home=$work/home
up_started=0
previous_faasctl=$(readlink /usr/local/bin/faasctl 2>/dev/null || true)

stage_names=()
stage_results=()
stage_seconds=()

summary() {
    local i passed=0 failed=0
    echo
    echo "================ tests/run.sh summary ================"
    for i in "${!stage_names[@]}"; do
        printf '  %-28s %-8s %5ss\n' "${stage_names[$i]}" "${stage_results[$i]}" "${stage_seconds[$i]}"
        case ${stage_results[$i]} in
        ok) passed=$((passed + 1)) ;;
        FAILED) failed=$((failed + 1)) ;;
        esac
    done
    echo "  total                                 ${SECONDS}s"
    echo "$passed of ${#stage_names[@]} stages ok, $failed failed"
    # The test counts of every `cargo test` binary, added up: the closing line.
    if [ -s "$work/cargo-test.log" ]; then
        awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
             END { printf "tests: %d passed, %d failed\n", p, f }' "$work/cargo-test.log"
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ $up_started -eq 1 ]; then
        FAAS_HOME=$smoke_home deploy/local/down.sh --purge >"$work/down.log" 2>&1 ||
            { echo "deploy/local/down.sh --purge failed:" >&2; cat "$work/down.log" >&2; }
    fi
    # Whatever a killed or crashed test left: its daemons, shims and
    # containers all name a path under $work.
    faas_kill_matching "$work/" 2>/dev/null
    faas_unmount_under "$work"
    if [ -n "$previous_faasctl" ] && [ ! -e /usr/local/bin/faasctl ]; then
        ln -sfn "$previous_faasctl" /usr/local/bin/faasctl
    fi
    summary
    rm -rf --one-file-system "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stage NAME COMMAND...: runs COMMAND, records its duration; stops the run on failure.
stage() {
    local name=$1 start=$SECONDS rc
    shift
    echo
    echo "================ $name ================"
    "$@"
    rc=$?
    stage_names+=("$name")
    stage_seconds+=($((SECONDS - start)))
    if [ $rc -eq 0 ]; then
        stage_results+=(ok)
    else
        stage_results+=(FAILED)
        echo "tests/run.sh: stage '$name' failed (exit $rc)" >&2
        exit 1
    fi
}

skip_stage() {
    stage_names+=("$1")
    stage_seconds+=(0)
    stage_results+=(skipped)
    echo
    echo "================ $1: SKIPPED ($2) ================"
}

install_deps() {
    faas_install_deps && faas_ensure_cargo && cargo --version || return 1
    # Every agent the tests start (they inherit the environment) runs its
    # containers through faas's shim and the OCI runtime that works here.
    FAAS_OCI_RUNTIME=${FAAS_OCI_RUNTIME:-$(faas_select_oci_runtime)}
    export FAAS_OCI_RUNTIME FAAS_CONTAINERD_RUNTIME=${FAAS_CONTAINERD_RUNTIME:-io.containerd.faas.v1}
    echo "agents run containers with $FAAS_CONTAINERD_RUNTIME and $FAAS_OCI_RUNTIME"
}

build_binaries() {
    faas_build_release "$repo" --workspace && faas_install_bins "$repo" "$FAAS_BIN_DIR" >/dev/null &&
        ls -l "$FAAS_BIN_DIR"
}

build_runtimes() {
    local out name archive archives=()
    out=$(runtimes/build.sh) || return 1
    while read -r name archive; do
        [ -n "$name" ] && archives+=("$name=$archive")
    done <<<"$out"
    [ ${#archives[@]} -gt 0 ] || { echo "runtimes/build.sh built nothing" >&2; return 1; }
    FAAS_RUNTIME_ARCHIVES=$(IFS=,; echo "${archives[*]}")
    export FAAS_RUNTIME_ARCHIVES
    echo "FAAS_RUNTIME_ARCHIVES=$FAAS_RUNTIME_ARCHIVES"
}

cargo_tests() {
    export FAAS_DRIVER_IT=1
    # shellcheck disable=SC2086
    timeout --kill-after=30 "${FAAS_TEST_TIMEOUT:-1800}" \
        cargo test --release --workspace --no-fail-fast ${FAAS_TEST_ARGS:-} -- --test-threads="${FAAS_TEST_THREADS:-2}" 2>&1 |
        tee "$work/cargo-test.log"
}

# The Node client's suite (clients/node) against a stack: npm ci needs the
# npm registry. Node and npm are tools of this test only, not of the two
# commands: installed here from Debian, not by install-deps.sh.
npm_registry_reachable() { timeout 10 bash -c 'exec 3<>/dev/tcp/registry.npmjs.org/443' 2>/dev/null; }

node_client_suite() {
    if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm >/dev/null ||
            return 1
    fi
    node --version && npm --version || return 1
    # shellcheck disable=SC2086
    timeout --kill-after=30 900 \
        cargo test --release -p faas-tests --test e2e ${FAAS_TEST_ARGS:-} -- --ignored clients::the_node_package 2>&1 |
        tee "$work/node-client.log"
    return "${PIPESTATUS[0]}"
}

# shellcheck disable=SC2016
port_in_use() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

smoke_up() {
    export FAAS_HOME=$smoke_home
    # A developer's own cluster may hold the default ports: use others then.
    if port_in_use 7070 || port_in_use 12379 || port_in_use 15000 || port_in_use 19464 || port_in_use 19465 ||
        port_in_use 18080; then
        echo "default ports busy: the smoke cluster uses 17070, 22379, 25000, 29464, 28080"
        export FAAS_LOCAL_LISTEN=127.0.0.1:17070 FAAS_LOCAL_ETCD_PORT=22379 FAAS_LOCAL_REGISTRY_PORT=25000 \
            FAAS_LOCAL_METRICS_PORT=29464 FAAS_LOCAL_GATEWAY=127.0.0.1:28080
    fi
    # up.sh writes its faasctl context here, not into the user's own file;
    # the smoke test reaches the cluster through that context.
    export FAASCTL_CONFIG=$work/faasctl.toml
    up_started=1
    timeout --kill-after=30 "${FAAS_SMOKE_TIMEOUT:-600}" deploy/local/up.sh
}

smoke_test() {
    export PATH=$smoke_home/bin:$PATH
    timeout --kill-after=30 "${FAAS_SMOKE_TIMEOUT:-600}" bash "$smoke_script"
}

smoke_down() {
    FAAS_HOME=$smoke_home deploy/local/down.sh --purge && up_started=0
}

stage "install dependencies" install_deps
stage "build binaries" build_binaries
stage "build runtimes" build_runtimes
stage "cargo test" cargo_tests
if npm_registry_reachable; then
    stage "node client suite" node_client_suite
else
    skip_stage "node client suite" "the npm registry (registry.npmjs.org:443) is unreachable"
fi
stage "deploy/local/up.sh" smoke_up
smoke_script=$(cd "$repo/.." && pwd)/shared/acceptance/smoke.sh
if [ -f "$smoke_script" ]; then
    stage "acceptance smoke test" smoke_test
else
    skip_stage "acceptance smoke test" "$smoke_script not found"
fi
stage "deploy/local/down.sh" smoke_down
