"""Write (or with --check, verify) each dvc.yaml stage's code deps: the import closure of the subcommand it runs.

`python scripts/dvc_code_deps.py` rewrites the `workflow/pausetune/...` lines under every stage's `deps:`
in place (everything else in dvc.yaml is kept byte for byte); `--check` exits 1 naming the stages that differ.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from pausetune.cli import COMMANDS  # noqa: E402
from pausetune.core.fingerprint import closure_files  # noqa: E402

STAGE = re.compile(r"^  (\w+):\n", re.M)
CMD = re.compile(r"pausetune ([a-z-]+)")


def expected(stage_text: str) -> list[str] | None:
    m = CMD.search(stage_text)
    return closure_files(COMMANDS[m.group(1)][0]) if m else None


def sync(text: str) -> tuple[str, list[str]]:
    """(new dvc.yaml text, names of stages whose code deps changed)."""
    starts = [m.start() for m in STAGE.finditer(text)] + [len(text)]
    head, out, changed = text[:starts[0]], [], []
    for a, b in zip(starts, starts[1:]):
        part = text[a:b]
        want = expected(part)
        dm = re.search(r"^( +)deps:\n((?:\1  - .*\n)+)", part, re.M)
        if want is None or dm is None:
            out.append(part)
            continue
        ind = dm.group(1) + "  "
        items = dm.group(2).splitlines()
        kept = [i for i in items if not i.strip().startswith("- workflow/pausetune/")]
        new = kept + [f"{ind}- {f}" for f in want]
        if new != items:
            changed.append(STAGE.match(part).group(1))
        out.append(part[:dm.start(2)] + "\n".join(new) + "\n" + part[dm.end(2):])
    return head + "".join(out), changed


def main() -> int:
    path = ROOT / "dvc.yaml"
    new, changed = sync(path.read_text())
    if "--check" in sys.argv:
        if changed:
            print(f"dvc.yaml: code deps differ from the import closure in stages {changed}; "
                  f"run python scripts/dvc_code_deps.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"dvc.yaml: code deps rewritten in {changed or 'no'} stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
