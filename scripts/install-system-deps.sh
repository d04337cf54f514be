#!/usr/bin/env bash
# Debian packages ubique needs: a C compiler and linker (the native runtime and every
# compiled module are linked with it) and glibc's headers/libmvec; and, for the aarch64
# target (cross-compiled here, run under qemu: tests/test_aarch64.py), the AArch64 cross
# compiler, its C library and qemu-user. Installs only what is missing, so it is cheap to
# run every time; needs root (or sudo) only when it installs.
set -euo pipefail
# the riscv64 targets of the example plug-in examples/plugins/ubique-riscv (optional too)
bash "$(dirname "${BASH_SOURCE[0]}")/install-riscv-deps.sh"
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
[ -e /usr/include/stdint.h ] || missing+=(libc6-dev)
# the aarch64 target: optional where apt-get is unavailable (its tests skip without them)
# (an AArch64 host runs that target natively with its own compiler: nothing to add)
cross=()
if [ "$(uname -m)" != "aarch64" ]; then
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || cross+=(gcc-aarch64-linux-gnu)
    [ -e /usr/aarch64-linux-gnu/include/stdint.h ] || cross+=(libc6-dev-arm64-cross)
    command -v qemu-aarch64 >/dev/null 2>&1 || cross+=(qemu-user)
fi
if [ ${#missing[@]} -eq 0 ] && [ ${#cross[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    if [ ${#cross[@]} -ne 0 ]; then
        echo "ubique's aarch64 target needs: ${cross[*]} (no apt-get here: its tests will be skipped)" >&2
    fi
    if [ ${#missing[@]} -ne 0 ]; then
        echo "ubique needs: ${missing[*]} (no apt-get here: install them with your package manager)" >&2
        exit 1
    fi
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
if [ ${#missing[@]} -ne 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# without recommends: qemu-user would pull in qemu-user-binfmt (a system-wide binfmt handler)
if [ ${#cross[@]} -ne 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${cross[@]}" >/dev/null
fi
