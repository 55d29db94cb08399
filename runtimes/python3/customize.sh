#!/bin/sh
# Called by runtimes/build.sh with the unpacked root filesystem as $1 (also
# by runtimes that share it, with their own Python).
# The root is read-only at run time, so without bytecode every call would
# compile each imported standard module from source. unchecked-hash: the
# bytecode does not depend on file times (reproducible, and valid after the
# layer's mtimes are clamped) and is never re-validated (no stat per import).
set -eu
stdlib=$(chroot "$1" /usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
chroot "$1" /usr/bin/python3 -m compileall -q --invalidation-mode unchecked-hash \
    "$stdlib" /opt/faas
