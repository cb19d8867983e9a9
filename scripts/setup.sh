#!/usr/bin/env bash
# Idempotent setup: a .venv with pausetune installed editable (CPU torch pinned). Reinstalls when pyproject changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "setup: '$PY -m venv' failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
fi
stamp=.venv/.pausetune-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build on a CPU machine.
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" "torch==${TORCH_VERSION:-2.13.0}"
  echo "$want" > "$stamp"
fi
