#!/bin/sh
# Builds the runtime images (OCI image archives) of runtimes/<name>/.
#   runtimes/build.sh [NAME...]      default: every runtime
# Prints "<name> <archive path>" per runtime; archives are cached in
# ${FAAS_CACHE_DIR:-/var/cache/faas}/runtimes/ by a hash of the runtime's
# directory, so an unchanged runtime is not rebuilt. Needs root (Debian 12):
# installs mmdebstrap and python3 itself when they are missing.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
missing=""
command -v mmdebstrap >/dev/null 2>&1 || missing="$missing mmdebstrap"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
if [ -n "$missing" ]; then
    echo "runtimes/build: installing$missing" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >&2
fi
exec python3 "$here/build.py" "$@"
