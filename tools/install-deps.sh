#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine (run as root, or
# with the packages already there): Debian packages for building
# libvirt-python, and a small virtualenv (.venv-tools) holding tox. Safe to
# run again: it only installs what is missing.
set -euo pipefail

cd "$(dirname "$0")/.."

APT_PACKAGES=(libvirt-dev pkg-config gcc git)
# Debian's python3 needs these for venvs and C extensions; a python3 from
# elsewhere (pyenv, a container image) may already carry both.
if ! python3 -c 'import ensurepip, sysconfig, os, sys
sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
        2>/dev/null; then
    APT_PACKAGES+=(python3-venv python3-dev)
fi
TOX_VERSION=4.67.15

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: missing Debian packages: ${missing[*]}" >&2
        echo "install-deps: run this script as root to install them" >&2
        exit 1
    fi
    echo "install-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! .venv-tools/bin/tox --version 2>/dev/null | grep -q "^$TOX_VERSION "; then
    echo "install-deps: creating .venv-tools with tox $TOX_VERSION"
    python3 -m venv .venv-tools
    .venv-tools/bin/pip install -q "tox==$TOX_VERSION"
fi
