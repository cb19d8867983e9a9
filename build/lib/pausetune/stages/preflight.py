"""Stage `preflight`: check an eval grid before anything runs, in the model's own tokens.

Config-level checks (models, variants, tasks, blocks, judge) and, for every model already prepared under
`--prepared`, the token budgets of every cell (window, needles and prompt inside each length). It names the
models it could not check in tokens (not prepared there), and under `--strict` fails on them. Snakemake runs the
same checks while it builds the DAG; this is the command for a user or a CI job to run them alone.
"""
from __future__ import annotations

from ..core import layout
from ..core.checks import check_eval
from ..core.io import PausetuneError


def add_arguments(p) -> None:
    p.add_argument("--prepared", default=layout.MODELS, help=f"where prepared models live (default {layout.MODELS})")
    p.add_argument("--strict", action="store_true",
                   help="fail when a model is not prepared there (its token budgets cannot be checked)")


def main(args, config: dict) -> int:
    unchecked = check_eval(config, prepared_root=args.prepared)
    models = config["eval"]["models"]
    if not unchecked:
        print(f"preflight: the eval grid of models {models} passes the checks, token budgets included")
        return 0
    # The token budgets are what this command exists for: never a silent pass without them.
    what = (f"model(s) {unchecked} not prepared under {args.prepared} (no {layout.PREPARED}): their token budgets "
            f"were not checked; prepare them first (snakemake --until prepare_model, or pausetune prepare-model)")
    if args.strict:
        raise PausetuneError(what)
    print(f"preflight: the eval grid of models {models} passes the config-level checks; {what}")
    return 0
