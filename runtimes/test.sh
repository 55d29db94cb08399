#!/bin/sh
# Builds faas-init and the runtime images, then runs each image for real with
# runc (test-only) following docs/contract.md. Needs root.
#   runtimes/test.sh [NAME...]     default: every runtime
# FAAS_TEST_FNS overrides the sample functions directory
# (default: ../shared/acceptance/fns next to the checkout).
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
missing=""
command -v runc >/dev/null 2>&1 || missing="$missing runc"
[ -x /bin/busybox ] || missing="$missing busybox-static"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
if [ -n "$missing" ]; then
    echo "runtimes/test: installing$missing" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >&2
fi
fns="${FAAS_TEST_FNS:-$repo/../shared/acceptance/fns}"
[ -d "$fns" ] || { echo "runtimes/test: no sample functions at $fns (set FAAS_TEST_FNS)" >&2; exit 1; }
faas_init="$("$repo/agent/init/build.sh")"
pairs=""
for line in $("$here/build.sh" "$@" | tr ' ' '='); do
    pairs="$pairs $line"
done
exec python3 "$here/test.py" "$faas_init" "$fns" $pairs
