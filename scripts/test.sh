#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (CPU; GPU-only tests skip without CUDA). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest -q "$@"
