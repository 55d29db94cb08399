# shellcheck shell=bash
# Builds the faas binaries. Sourced by deploy/local/up.sh and tests/run.sh:
#   . deploy/lib/build.sh
#   faas_build_release ROOT [--workspace]   # cargo build --release (+ faas-init)
#   faas_install_bins ROOT DEST             # copies the binaries into DEST
# faas_install_bins prints the names of the binaries that changed.

FAAS_BINARIES=(faas-controlplane faas-agent faasctl containerd-shim-faas-v1 faas-gateway)

faas_build_release() {
    local root=$1 scope=${2:-}
    if [ "$scope" = "--workspace" ]; then
        (cd "$root" && cargo build --release --workspace --bins)
    else
        (cd "$root" && cargo build --release --bin faas-controlplane --bin faas-agent --bin faasctl \
            --bin containerd-shim-faas-v1 --bin faas-gateway)
    fi || return 1
    # faas-init is a static binary with its own build (agent/init/build.sh),
    # which prints its path on the last line.
    FAAS_INIT_BINARY=$("$root/agent/init/build.sh" | tail -n 1) || return 1
    [ -x "$FAAS_INIT_BINARY" ] || { echo "agent/init/build.sh gave no binary" >&2; return 1; }
    export FAAS_INIT_BINARY
}

faas_install_bins() {
    local root=$1 dest=$2 target=${CARGO_TARGET_DIR:-$1/target} src name
    mkdir -p "$dest"
    for name in "${FAAS_BINARIES[@]}" faas-init; do
        if [ "$name" = faas-init ]; then
            src=${FAAS_INIT_BINARY:?faas_build_release first}
        else
            src=$target/release/$name
        fi
        [ -x "$src" ] || { echo "no binary $src" >&2; return 1; }
        if ! cmp -s "$src" "$dest/$name"; then
            # Copy then rename: a running binary cannot be overwritten in place.
            cp "$src" "$dest/.$name.new" && chmod 0755 "$dest/.$name.new" &&
                mv -f "$dest/.$name.new" "$dest/$name" || return 1
            echo "$name"
        fi
    done
}
