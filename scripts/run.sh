#!/usr/bin/env bash
# Quick start: set up, then run the whole default pipeline (config/config.yaml). Extra args go to snakemake.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# Snakemake parses --configfile overlays before the workflow's code runs, and for a malformed one says only "not
# valid JSON or YAML": check them first, for one line with file, line, column and the problem.
PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}" python - --cores all "$@" <<'EOF'
import sys

from pausetune.core.config import check_snakemake_configfiles
from pausetune.core.io import PausetuneError

try:
    check_snakemake_configfiles(sys.argv[1:])
except PausetuneError as e:
    sys.exit(f"config error: {e}")
EOF
exec snakemake --cores all "$@"
