#!/usr/bin/env bash
# Re-resolve requirements.lock, what scripts/setup.sh installs: every package pyproject.toml needs (runtime, the
# test extra, the build backend) pinned with its hashes, for the CPU install on Python 3.11 (torch 2.13.0, the CPU
# build, which pip finds where its configuration points). Only what a pyproject change needs moves; pass --upgrade
# to move every pin to the newest release pyproject allows. pip-tools runs from a throwaway venv.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"${PYTHON:-python3.11}" -m venv "$tools"
"$tools/bin/python" -m pip install -q --disable-pip-version-check "pip-tools==7.7.0"
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$tools/bin/pip-compile" --quiet --generate-hashes --allow-unsafe \
  --strip-extras --build-deps-for=editable --extra=test --no-emit-index-url --no-emit-find-links \
  --upgrade-package "torch==2.13.0" --output-file=requirements.lock "$@" pyproject.toml
