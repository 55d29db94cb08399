#!/bin/sh
# Called by runtimes/build.sh with the unpacked root filesystem as $1.
# The root is read-only at run time, so without bytecode every call would
# compile each imported standard module from source. unchecked-hash: the
# bytecode does not depend on file times (reproducible, and valid after the
# layer's mtimes are clamped) and is never re-validated (no stat per import).
set -eu
chroot "$1" /usr/bin/python3 -m compileall -q --invalidation-mode unchecked-hash \
    /usr/lib/python3.11 /opt/faas
