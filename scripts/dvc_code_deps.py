"""Write (or with --check, verify) what dvc.yaml takes from the package: each stage's code deps (the import closure
of the subcommand it runs) and the train stage's recipe params (pausetune.core.training.recipe.RECIPE_KEYS).

`python scripts/dvc_code_deps.py` rewrites the `workflow/pausetune/...` lines under every stage's `deps:` and the
`train...` lines under the train stage's `params:` in place (everything else in dvc.yaml is kept byte for byte);
`--check` exits 1 naming the stages that differ.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from pausetune.cli import COMMANDS  # noqa: E402
from pausetune.core.fingerprint import closure_files  # noqa: E402
from pausetune.core.training.recipe import RECIPE_KEYS  # noqa: E402

STAGE = re.compile(r"^  (\w+):\n", re.M)
CMD = re.compile(r"pausetune ([a-z-]+)")
# Config keys a command's stage lists because the package says so: (the prefix of the lines it owns, the keys).
PARAMS = {"train": ("train", [f"train.{k}" for k in RECIPE_KEYS])}


def _rewrite(part: str, items: re.Match, indent: str, owned, want: list[str]) -> str:
    """`part` with the item lines of `items` (group 2) that `owned` matches replaced by `want`, at `indent`."""
    lines = items.group(2).splitlines()
    new = [i for i in lines if not owned(i.strip()[2:])] + [f"{indent}- {w}" for w in want]
    return part[:items.start(2)] + "\n".join(new) + "\n" + part[items.end(2):]


def sync_stage(part: str) -> str:
    m = CMD.search(part)
    if m is None:
        return part
    cmd = m.group(1)
    deps = re.search(r"^( +)deps:\n((?:\1  - .*\n)+)", part, re.M)
    if deps is not None:
        part = _rewrite(part, deps, deps.group(1) + "  ", lambda i: i.startswith("workflow/pausetune/"),
                        closure_files(COMMANDS[cmd][0]))
    params = re.search(r"^( +)- config/config\.yaml:\n((?:\1    - .*\n)+)", part, re.M)
    if cmd in PARAMS and params is not None:
        prefix, keys = PARAMS[cmd]
        part = _rewrite(part, params, params.group(1) + "    ", lambda i: i == prefix or i.startswith(prefix + "."),
                        keys)
    return part


def sync(text: str) -> tuple[str, list[str]]:
    """(new dvc.yaml text, names of stages whose code deps or recipe params changed)."""
    starts = [m.start() for m in STAGE.finditer(text)] + [len(text)]
    head, out, changed = text[:starts[0]], [], []
    for a, b in zip(starts, starts[1:]):
        part = text[a:b]
        new = sync_stage(part)
        if new != part:
            changed.append(STAGE.match(part).group(1))
        out.append(new)
    return head + "".join(out), changed


def main() -> int:
    path = ROOT / "dvc.yaml"
    new, changed = sync(path.read_text())
    if "--check" in sys.argv:
        if changed:
            print(f"dvc.yaml: code deps or recipe params differ from the package in stages {changed}; "
                  f"run python scripts/dvc_code_deps.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"dvc.yaml: code deps and recipe params rewritten in {changed or 'no'} stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
