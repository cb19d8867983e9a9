#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (CPU; GPU-only tests skip without CUDA). Extra args go to pytest.
#
# With no args, the DVC module runs in a second pytest process beside the rest: it builds its own projects (no
# session fixture) and its ~50 DVC stages are mostly one process waiting on another, so on 2 cores it fills the
# other suite's idle time (docs/benchmarks.md, "Test suite time"). Its output follows the main run's; the exit
# status is the worse of the two. PAUSETUNE_TEST_SERIAL=1 runs everything in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
if [[ $# -gt 0 || "${PAUSETUNE_TEST_SERIAL:-0}" == "1" ]]; then
    exec python -m pytest -q "$@"
fi
side="$(mktemp -d "${TMPDIR:-/tmp}/pausetune-dvc-tests.XXXXXX")"
python -m pytest -q tests/test_dvc.py --basetemp="$side/tmp" >"$side/log" 2>&1 &
dvc_pid=$!
trap 'kill "$dvc_pid" 2>/dev/null || true' INT TERM
main_rc=0
python -m pytest -q --ignore=tests/test_dvc.py || main_rc=$?
dvc_rc=0
wait "$dvc_pid" || dvc_rc=$?
echo "---------------------------------------- tests/test_dvc.py (second process, rc $dvc_rc)"
cat "$side/log"
if [[ $dvc_rc -eq 0 ]]; then rm -rf "$side"; else echo "(its temp folders kept: $side/tmp)"; fi
exit $(( main_rc > dvc_rc ? main_rc : dvc_rc ))
