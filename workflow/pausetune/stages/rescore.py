"""Stage `rescore`: recompute the scores of existing cells from their stored answers, without generation.

`pausetune rescore [--cells results/eval ...] [--judge-model-dir data/models/J]` reads every cell JSON under the
given files or folders, recomputes recall/score (and the judge, when `eval.judge` is configured) with today's
scoring code, and writes each changed cell atomically, its `results/.cells/` entry first. Each cell's
`code.score` then names the scoring code that made its score; `code.generate` still names the code that made
its answer. The eval stage does the same by itself for cells it finds made by other scoring code.
"""
from __future__ import annotations

from pathlib import Path

from ..core import layout
from ..core.io import PausetuneError, quote, read_json, write_json
from ..core.evaluation.scoring import make_judge, score_cell, scoring_code


def find_cells(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.rglob("depth*.json"))
        elif p.is_file():
            out.append(p)
        else:
            raise PausetuneError(f"{p}: no such cell file or folder")
    return out


def rescore(paths: list[str], config: dict, cells_cache: str | None, judge_model_dir=None, force: bool = False,
            log=print) -> dict:
    current = scoring_code()
    files = find_cells(paths)
    cells = []
    for f in files:
        data = read_json(f)
        if not isinstance(data, dict):
            raise PausetuneError(f"{f}: not a cell (a JSON object expected, got {quote(data)})")
        for key in ("cell_id", "answer", "facts", "question"):
            if key not in data:
                raise PausetuneError(f"{f}: not a cell (no '{key}')")
        try:
            layout.cached_cell("", data["cell_id"])
        except PausetuneError as e:
            raise PausetuneError(f"{f}: not a cell ({e})") from None
        cells.append((f, data))
    stale = [(f, d) for f, d in cells if force or d.get("code", {}).get("score") != current]
    call = make_judge(config, judge_model_dir) if stale else None
    changed = 0
    for f, data in stale:
        new = score_cell(data, config["eval"].get("judge"), call)
        if cells_cache:
            write_json(layout.cached_cell(cells_cache, new["cell_id"]), new)
        write_json(f, new)
        changed += new.get("score") != data.get("score")
    log(f"rescore: {len(files)} cells, {len(stale)} rescored with scoring code {current[:12]}, "
        f"{changed} scores changed")
    return {"cells": len(files), "rescored": len(stale), "changed": changed}


def add_arguments(p) -> None:
    p.add_argument("--cells", nargs="+", default=[layout.CELLS], help=f"cell files or folders (default {layout.CELLS})")
    p.add_argument("--cells-cache", default=layout.CELLS_CACHE, help="the cell cache to update ('' for none)")
    p.add_argument("--judge-model-dir", default=None, help="data/models/{judge model}, for a local judge")
    p.add_argument("--force", action="store_true", help="rescore cells already scored by today's code too")


def main(args, config: dict) -> int:
    cache = args.cells_cache or None
    if cache and not Path(cache).is_dir():
        cache = None
    rescore(args.cells, config, cache, args.judge_model_dir, args.force)
    return 0
