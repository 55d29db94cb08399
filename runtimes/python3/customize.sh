#!/bin/sh
# Called by runtimes/build.sh with the unpacked root filesystem as $1 (also
# by runtimes that share it, with their own Python).
set -eu
export LC_ALL=C  # glob order: the CA bundle below must be reproducible

# pip (python3-pip) is in the image for the deploy-time build (build.py).
# An extract runs no maintainer scripts, so ca-certificates' postinst never
# made the bundle that OpenSSL's default path (/usr/lib/ssl/cert.pem) and
# Debian's pip (its certifi is patched to it) read: without it every HTTPS
# index fails verification. Concatenate the Mozilla set, as
# update-ca-certificates does with its default configuration.
if [ -d "$1/usr/share/ca-certificates/mozilla" ]; then
    mkdir -p "$1/etc/ssl/certs"
    for cert in "$1"/usr/share/ca-certificates/mozilla/*.crt; do
        sed -e '$a\' "$cert"
    done > "$1/etc/ssl/certs/ca-certificates.crt"
fi
# bookworm's setuptools (a dependency of its pip) ships a .pth that makes
# every interpreter start import _distutils_hack and put a finder first on
# sys.meta_path: ~3 ms and a changed import system for every call, for
# nobody's benefit (setuptools installs its distutils shim itself when
# imported).
rm -f "$1/usr/lib/python3/dist-packages/distutils-precedence.pth"

# The root is read-only at run time, so without bytecode every call would
# compile each imported standard module from source (and every build would
# compile pip). unchecked-hash: the bytecode does not depend on file times
# (reproducible, and valid after the layer's mtimes are clamped) and is
# never re-validated (no stat per import).
stdlib=$(chroot "$1" /usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
dirs="$stdlib /opt/faas"
[ -d "$1/usr/lib/python3/dist-packages" ] && dirs="$dirs /usr/lib/python3/dist-packages"
chroot "$1" /usr/bin/python3 -m compileall -q --invalidation-mode unchecked-hash $dirs
