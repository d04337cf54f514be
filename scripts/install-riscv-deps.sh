#!/usr/bin/env bash
# Debian packages for the riscv64 targets of the ubique-riscv plug-in
# (examples/plugins/ubique-riscv; tests/test_plugin_riscv.py): the RISC-V cross compiler, its
# C library (linked into every riscv64 build, and the sysroot qemu runs them with) and
# qemu-user (qemu-riscv64). Installs only what is missing, so it is cheap to run every time;
# needs root (or sudo) only when it installs. Where apt-get is unavailable it says what is
# missing and succeeds: the plug-in's tests skip without these tools. Nothing is needed on a
# RISC-V host, which runs the targets natively with its own compiler.
set -euo pipefail
[ "$(uname -m)" != "riscv64" ] || exit 0
missing=()
command -v riscv64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-riscv64-linux-gnu)
[ -e /usr/riscv64-linux-gnu/include/stdint.h ] || missing+=(libc6-dev-riscv64-cross)
command -v qemu-riscv64 >/dev/null 2>&1 || missing+=(qemu-user)
[ ${#missing[@]} -ne 0 ] || exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ubique's riscv64 targets need: ${missing[*]} (no apt-get here: their tests will be skipped)" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
# without recommends: qemu-user would pull in qemu-user-binfmt (a system-wide binfmt handler)
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
