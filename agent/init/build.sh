#!/bin/sh
# Builds faas-init as a fully static binary (it is bind-mounted into arbitrary
# images, which may have no or another libc) and prints its path.
# No musl target is installed here, so this links glibc statically; the
# explicit --target keeps +crt-static off build scripts and proc macros.
set -eu
cd "$(dirname "$0")/../.."
target=x86_64-unknown-linux-gnu
# Stripped and without debug info: it is mounted into every container.
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet --release -p faas-init --target "$target" >&2
binary="${CARGO_TARGET_DIR:-$PWD/target}/$target/release/faas-init"
test -x "$binary"
echo "$binary"
