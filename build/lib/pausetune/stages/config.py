"""Stage `config`: write the merged, validated config (config/config.yaml + overlays, for DVC)."""
from __future__ import annotations

import yaml


def add_arguments(p) -> None:
    p.add_argument("--output", required=True, help="where to write the merged config (e.g. config/config.yaml)")


def main(args, config: dict) -> int:
    from ..core.io import write_text

    sources = " + ".join(args.config) or "the schema defaults"
    header = (f"# Written by `pausetune config` from {sources}{' + --config-json' if args.config_json else ''}:\n"
              "# every key resolved (schema defaults filled in), so DVC sees each parameter. The original files are\n"
              "# the ones to edit; `git checkout config/config.yaml` restores the default.\n")
    write_text(args.output, header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120))
    print(f"config: {sources} -> {args.output}")
    return 0
