"""Stage `preflight`: check an eval grid before anything runs, in the model's own tokens.

Config-level checks (models, variants, tasks, blocks, judge) and, for every model already prepared under
`--prepared`, the token budgets of every cell (window, needles and prompt inside each length). Snakemake runs
the same checks while it builds the DAG; this is the command for a user or a CI job to run them alone.
"""
from __future__ import annotations

from ..core import layout
from ..core.checks import check_eval


def add_arguments(p) -> None:
    p.add_argument("--prepared", default=layout.MODELS, help=f"where prepared models live (default {layout.MODELS})")


def main(args, config: dict) -> int:
    check_eval(config, prepared_root=args.prepared)
    print(f"preflight: the eval grid of models {config['eval']['models']} passes the checks")
    return 0
