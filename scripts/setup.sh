#!/usr/bin/env bash
# Everything `make test` and `make demo` need on a fresh machine, in order: the virtual
# environment with the project installed, PostgreSQL and Redis running, the Fashion-MNIST
# images. Idempotent, and quick when all is in place.
#
#   scripts/setup.sh          all steps
#   scripts/setup.sh venv     only the virtual environment
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
# Newer than pyproject.toml once the install has succeeded; lives in the venv, dies with it.
STAMP=$VENV/.nst-installed
FASHION_MNIST=/usr/share/datasets/fashion-mnist
CHROMIUM=/usr/bin/chromium

setup_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found (set PYTHON=...)" >&2; exit 1; }
        echo "setup: creating $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
        echo "setup: installing the project and its dev tools into $VENV"
        "$VENV/bin/python" -m pip install -e '.[dev]'
        touch "$STAMP"
    fi
}

# apt-get install PACKAGE (root or password-less sudo), or say what to install by hand.
apt_install() {
    local package=$1 what=$2
    if ! command -v apt-get >/dev/null; then
        echo "setup: no apt-get; install Debian's $package ($what) yourself" >&2
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! sudo -n true 2>/dev/null; then
            echo "setup: not root and no password-less sudo; install $package yourself" >&2
            return 0
        fi
        sudo=(sudo -n)
    fi
    echo "setup: installing $package with apt-get"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$package"
}

setup_fashion_mnist() {
    [ -d "$FASHION_MNIST" ] && return 0
    apt_install dataset-fashion-mnist "$FASHION_MNIST"
}

# The UI's browser tests drive Debian's Chromium with Playwright (never `playwright install`).
setup_chromium() {
    [ -x "$CHROMIUM" ] && return 0
    apt_install chromium "$CHROMIUM"
}

case "${1:-all}" in
    venv) setup_venv ;;
    all)
        setup_venv
        scripts/services.sh
        setup_fashion_mnist
        setup_chromium
        ;;
    *) echo "usage: $0 [all|venv]" >&2; exit 2 ;;
esac
