#!/usr/bin/env bash
# Cross-builds msn-classify, msn-fold and msn for the boards, installing what is missing.
#
#   scripts/cross.sh [--profile PROFILE] [--runtime-only] [--install-only] [TARGET...]
#
# --install-only installs what the targets need (Debian's cross gcc, qemu-user, rustup's
# standard library) and builds nothing: CI fetches them in the background while it builds.
# --runtime-only builds msn-classify and msn-fold alone, without the training feature. Without
# it, `msn` (training, `msn teach`) is built too: CI builds that for aarch64 and runs it under
# qemu (crates/msn-cli/tests/emulated.rs).
#
# Targets (default: all three):
#   aarch64-unknown-linux-gnu      Raspberry Pi 4/5 with a 64-bit OS, Jetson
#   aarch64-unknown-linux-musl     the same boards, one static file whatever the libc
#   armv7-unknown-linux-gnueabihf  Raspberry Pi 2/3 with a 32-bit OS
# (armv7-unknown-linux-musleabihf is not offered: rustup cannot fetch its standard library
# from the registries this project builds from.)
# PROFILE defaults to `dist` (opt-level 3, stripped; `dist-small` for opt-level "z"; see Cargo.toml). Binaries end up in
# target/TARGET/PROFILE/ (target/TARGET/debug/ for `dev`, which CI uses: its build scripts and
# proc macros are the host's from `cargo test`, so only the target's code is compiled). Linkers come from .cargo/config.toml; the C compilers that build
# tract's assembly kernels and mimalloc are Debian's cross gcc.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dist
runtime_only=0
install_only=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --runtime-only) runtime_only=1; shift ;;
        --install-only) install_only=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu aarch64-unknown-linux-musl
                                     armv7-unknown-linux-gnueabihf)

need_apt=()
for t in "${targets[@]}"; do
    case "$t" in
        aarch64-*) command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
        armv7-*) command -v arm-linux-gnueabihf-gcc >/dev/null || need_apt+=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross) ;;
        *) echo "unknown target $t" >&2; exit 2 ;;
    esac
done
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
[ "$install_only" = 0 ] || exit 0

for t in "${targets[@]}"; do
    echo "== $t ($profile)"
    if [ "$runtime_only" = 1 ]; then
        bins=(msn-classify msn-fold)
        cargo build --profile "$profile" --target "$t" -p msn-cli --no-default-features \
            --bin msn-classify --bin msn-fold
    else
        bins=(msn-classify msn-fold msn)
        cargo build --profile "$profile" --target "$t" -p msn-cli \
            --bin msn-classify --bin msn-fold --bin msn
    fi
    dir=$profile; [ "$profile" = dev ] && dir=debug   # cargo's directory for the dev profile
    for b in "${bins[@]}"; do
        f="target/$t/$dir/$b"
        awk -v b="$b" -v f="$f" -v s="$(stat -c %s "$f")" \
            'BEGIN { printf "  %-14s %6.1f MB  %s\n", b, s / 1048576, f }'
    done
done
