#!/usr/bin/env bash
# Debian packages ubique needs: a C compiler and linker (the native runtime and every
# compiled module are linked with it) and glibc's headers/libmvec. Installs only what is
# missing, so it is cheap to run every time; needs root (or sudo) only when it installs.
set -euo pipefail
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
[ -e /usr/include/stdint.h ] || missing+=(libc6-dev)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ubique needs: ${missing[*]} (no apt-get here: install them with your package manager)" >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
