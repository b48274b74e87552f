#!/usr/bin/env bash
# Installs a pinned uv into .tools/uv when none is on PATH (uv then builds .venv from uv.lock).
set -euo pipefail
python="${1:-python3}"
version="${2:?uv version}"
cd "$(dirname "$0")/.."

if ! command -v "$python" >/dev/null; then
    echo "error: $python not found; install Python 3.11 or newer (apt-get install python3)" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: edge-agent needs Python 3.11 or newer; $python is $("$python" -V 2>&1)" >&2
    exit 1
fi
if ! "$python" -m venv .tools/uv 2>/dev/null; then
    rm -rf .tools/uv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing python3-venv (Debian splits venv out of python3)..." >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$python" -m venv .tools/uv
    else
        echo "error: '$python -m venv' failed; run: sudo apt-get install python3-venv" >&2
        exit 1
    fi
fi
.tools/uv/bin/pip install --quiet --disable-pip-version-check "uv==$version"
