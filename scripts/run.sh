#!/usr/bin/env bash
# Quick start: set up, then run the whole default pipeline (config/config.yaml). Extra args go to snakemake.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec snakemake --cores all "$@"
