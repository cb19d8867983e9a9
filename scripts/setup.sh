#!/usr/bin/env bash
# Idempotent setup: a .venv holding exactly requirements.lock (every version pinned, every file hash-checked: two
# fresh setups get the same packages), then pausetune itself, editable, with nothing more resolved. Reinstalls when
# the lock, pyproject.toml or this script change. The lock is for Python 3.11 on a CPU: its torch is 2.13.0+cpu,
# which pip finds where its configuration points (this machine: a find-links folder). Update it: scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "setup: '$PY -m venv' failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
fi
.venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "setup: requirements.lock is for Python 3.11, .venv has $(.venv/bin/python -V 2>&1);" \
    "rm -r .venv and run PYTHON=python3.11 bash scripts/setup.sh" >&2
  exit 1
}
stamp=.venv/.pausetune-installed
want=$(cat pyproject.toml requirements.lock scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --require-hashes -r requirements.lock
  # the build backend (setuptools) is in the lock too: no isolated build env, nothing unpinned fetched
  "${pip[@]}" --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
