#!/usr/bin/env bash
# Builds a versioned release bundle: what deploy/install.sh installs a
# machine from.
#
#   deploy/release.sh [--version VERSION] [--out DIR]
#
# VERSION defaults to the workspace's version plus the commit
# (0.1.0+3f2a9c1, "+3f2a9c1.dirty" with uncommitted changes). The binaries
# carry it (FAAS_VERSION at build: agents report it, `faasctl node ls`
# shows it). Prints the bundle's path: DIR/faas-VERSION.tar.gz (DIR
# defaults to target/bundles), holding faas-VERSION/ with
#   VERSION, SHA256SUMS
#   bin/        faas-controlplane faas-agent faasctl containerd-shim-faas-v1 faas-init
#   systemd/    the units
#   config/     controlplane.toml, agent.toml, env/, etcd/, registry/
#   runtimes/   the runtime recipes (runtimes/build.sh builds their images)
#   install.sh  and lib/ (its helpers)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
version=
out=$repo/target/bundles
while [ $# -gt 0 ]; do
    case $1 in
    --version) version=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "release.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ -z "$version" ]; then
    base=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)
    commit=$(git -C "$repo" rev-parse --short=7 HEAD)
    dirty=
    git -C "$repo" diff --quiet HEAD -- 2>/dev/null || dirty=.dirty
    version="$base+$commit$dirty"
fi
# The version names files and shows in `node ls`: keep it to a safe alphabet.
[[ $version =~ ^[0-9A-Za-z][0-9A-Za-z.+_-]{0,62}$ ]] ||
    { echo "release.sh: version '$version' is not [0-9A-Za-z.+_-], at most 63 characters" >&2; exit 2; }

# shellcheck source=deploy/lib/build.sh
. "$repo/deploy/lib/build.sh"
echo "[release] building faas $version" >&2
FAAS_VERSION=$version faas_build_release "$repo" >&2

name=faas-$version
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/$name
mkdir -p "$root/bin" "$root/lib"
faas_install_bins "$repo" "$root/bin" >/dev/null
# Without their debug information (the release profile keeps it for
# profiling): a quarter of the size; symbols stay, for backtraces.
if command -v strip >/dev/null; then
    strip --strip-debug "$root"/bin/*
fi
cp -r "$repo/deploy/systemd" "$root/systemd"
cp -r "$repo/deploy/config" "$root/config"
# The private instances' templates of deploy/local are not for machines.
rm -f "$root/config/containerd.toml" "$root/config/registry.yml"
cp "$repo/deploy/install.sh" "$root/install.sh"
cp "$repo/deploy/lib/install-deps.sh" "$repo/deploy/lib/proc.sh" "$root/lib/"
mkdir -p "$root/runtimes"
(cd "$repo" && git ls-files -- runtimes |
    tar -cf - -T -) | tar -xf - -C "$root"
echo "$version" >"$root/VERSION"
(cd "$root" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort |
    xargs sha256sum >SHA256SUMS)

mkdir -p "$out"
# Reproducible order and owners; the mtimes are the build's.
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$stage" -czf "$out/$name.tar.gz.new" "$name"
mv -f "$out/$name.tar.gz.new" "$out/$name.tar.gz"
echo "[release] $(du -h "$out/$name.tar.gz" | cut -f1) $out/$name.tar.gz" >&2
echo "$out/$name.tar.gz"
