"""The eval grid: lengths x depths expansion, cell paths, job blocks, and the checks run before any job.

A cell is (model, variant, task, seed, length, depth) and has its own file,
`results/eval/{model}/{variant}/{task}/seed{seed}/len{length}/depth{depth}.json`, the depth written without a
trailing `.0` when integral (`depth50.json`, `depth12.5.json`). A job evaluates a *block* of cells with one
loaded model (config `eval.block`):

- `cell`: one cell per job (any single cell is its own target, nothing else runs);
- `length` (default): all depths of one (model, variant, task, seed, length);
- `seed`: all tasks x lengths x depths of one (model, variant, seed): one model load and one haystack prefix for
  everything that shares the token stream (the most prefix-KV reuse; the fewest, longest jobs).

`check_eval(config)` is what the Snakefile calls while it builds the DAG (and the `eval` CLI calls again): every
user error is one line naming the config key, before any job starts. Checks that need the tokenizer (needle and
prompt sizes against each length) run here only when the model is already prepared, and always in the CLI.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from .. import layout
from ..config import filled
from ..design import TUNED, format_depth
from ..io import PausetuneError


# ---------------------------------------------------------------------------------------------------------
# Expansion


def expand_lengths(spec) -> list[int]:
    """A list as given, or {min, max, num, spacing: linear|log} (linear: the harness's rounded linspace)."""
    if isinstance(spec, list):
        return [int(x) for x in spec]
    spec = filled(("$defs", "lengths"), spec, "eval.lengths")
    lo, hi, num = int(spec["min"]), int(spec["max"]), int(spec["num"])
    if lo > hi:
        raise PausetuneError(f"config key 'eval.lengths': min {lo} > max {hi}")
    if num == 1:
        return [lo]
    if spec["spacing"] == "log":
        vals = [lo * (hi / lo) ** (i / (num - 1)) for i in range(num)]
    else:
        vals = [lo + (hi - lo) * i / (num - 1) for i in range(num)]
    return _distinct(sorted(set(int(round(v)) for v in vals)), num, "eval.lengths", "lengths")


def _distinct(vals, num: int, key: str, unit: str):
    """A spacing spec's values, refused when rounding merged some: `num` 200 depths between 0 and 100 are 101 whole
    percents, and a grid silently smaller than asked would be reported as the one asked for."""
    if len(vals) < num:
        raise PausetuneError(f"config key '{key}': num {num} gives only {len(vals)} distinct {unit} between min and "
                             f"max once rounded")
    return vals


def _logistic(x: float, big: float = 100, x0: float = 50, k: float = 0.1) -> float:
    # The harness's sigmoid spacing (denser near 0 and 100); 0 and 100 stay exact.
    if x in (0, 100):
        return float(x)
    return round(big / (1 + math.exp(k * (x - x0))), 3)


def expand_depths(spec) -> list[float]:
    """A list as given, or {min, max, num, spacing: linear|sigmoid} (linear: the harness's rounded linspace)."""
    if isinstance(spec, list):
        vals = [float(x) for x in spec]
    else:
        spec = filled(("$defs", "depths"), spec, "eval.depths")
        lo, hi, num = float(spec["min"]), float(spec["max"]), int(spec["num"])
        xs = [lo + (hi - lo) * i / (num - 1) for i in range(num)] if num > 1 else [lo]
        if spec["spacing"] == "sigmoid":
            vals = [_logistic(x) for x in xs]
        else:
            vals = [float(round(x)) for x in xs]
        _distinct(set(vals), num, "eval.depths", "depths")
    out = []
    for v in vals:
        if not 0 <= v <= 100:
            raise PausetuneError(f"config key 'eval.depths': depth {format_depth(v)} is outside 0-100")
        if v not in out:
            out.append(v)
    return sorted(out)


def cell_path(model: str, variant: str, task: str, seed: int, length: int, depth: float,
              root: str = layout.RESULTS, tseed: int | None = None) -> str:
    """A cell's file; a tuned variant's names its training seed `tseed` (required for those, refused otherwise)."""
    tuned = variant in TUNED
    if tuned != (tseed is not None):
        raise PausetuneError(f"cell of variant '{variant}': " + (
            "a tuned variant's cell needs its training seed" if tuned else "an untrained variant has no training seed"))
    return layout.cell(root, tuned).format(model=layout.check_name(model, "model"), variant=variant,
                                           task=layout.check_name(task, "task"), seed=seed, length=int(length),
                                           depth=format_depth(depth), tseed=tseed)


# ---------------------------------------------------------------------------------------------------------
# Blocks


@dataclass(frozen=True)
class Block:
    """Cells one job evaluates with one loaded model: per task, its lengths x depths (one shared haystack seed)."""
    model: str
    variant: str
    seed: int
    grid: tuple[tuple[str, tuple[int, ...], tuple[float, ...]], ...]  # (task, lengths, depths)
    tseed: int | None = None  # the training seed of a tuned variant's adapter

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t, _, _ in self.grid)

    def cells(self) -> list[tuple[str, int, float]]:
        return [(t, n, d) for t, ls, ds in self.grid for n in ls for d in ds]

    def paths(self, root: str = layout.RESULTS) -> list[str]:
        return [cell_path(self.model, self.variant, t, self.seed, n, d, root, self.tseed) for t, n, d in self.cells()]


def task_axes(config: dict, task: str) -> tuple[list[int], list[float]]:
    """(lengths, depths) of one task: `eval.task_grid.<task>` where it sets them, else eval.lengths/depths."""
    ev = config["eval"]
    over = ev["task_grid"].get(task) or {}
    try:
        return expand_lengths(over.get("lengths", ev["lengths"])), expand_depths(over.get("depths", ev["depths"]))
    except PausetuneError as e:
        if not over:
            raise
        raise PausetuneError(str(e).replace("'eval.", f"'eval.task_grid.{task}.")) from None


def grid_axes(config: dict) -> dict:
    """The grid's axes; `lengths`/`depths` are the union over tasks, `per_task` each task's own."""
    ev = config["eval"]
    per_task = {t: task_axes(config, t) for t in ev["tasks"]}
    return {"models": list(ev["models"]), "variants": list(ev["variants"]), "tasks": list(ev["tasks"]),
            "seeds": list(ev["seeds"]), "per_task": per_task, "train_seeds": list(config["train"]["seeds"]),
            "lengths": sorted({n for ls, _ in per_task.values() for n in ls}),
            "depths": sorted({d for _, ds in per_task.values() for d in ds})}


def block_shape(config: dict, tuned: bool = False) -> dict:
    """What one eval job is, as Snakemake patterns: its outputs, log, benchmark file and the CLI's grid arguments
    (`tuned`: a tuned variant's job, one training seed's adapter, `{tseed}` a wildcard more).

    Wildcards stay as `{model}` etc.; a job's other cells are spelled out (all depths of a length block, every
    task's grid of a seed block), so each cell stays its own requestable target."""
    ax, mode = grid_axes(config), config["eval"]["block"]
    cell = layout.cell(tuned=tuned)
    run = "/tseed{tseed}" if tuned else ""
    job = "{model}/{variant}" + run + "/{task}/seed{seed}/len{length}"
    depths = [format_depth(d) for d in ax["depths"]]

    def spell(task: str, lengths, ds) -> list[str]:
        return [cell.replace("{task}", task).replace("{length}", str(n)).replace("{depth}", d)
                for n in lengths for d in ds]

    if mode == "cell":
        out, name = [cell], job + "/depth{depth}"
        args = "--tasks {wildcards.task:q} --lengths {wildcards.length:q} --depths {wildcards.depth:q}"
    elif mode == "length":
        out, name = [cell.replace("{depth}", d) for d in depths], job
        args = f"--tasks {{wildcards.task:q}} --lengths {{wildcards.length:q}} --depths {shlex.join(depths)}"
    else:
        out = [p for t, (ls, ds) in ax["per_task"].items() for p in spell(t, ls, [format_depth(d) for d in ds])]
        name, args = "{model}/{variant}" + run + "/seed{seed}", f"--tasks {shlex.join(ax['tasks'])}"
    return {"out": out, "log": layout.log("eval", name), "benchmark": layout.benchmark("eval", name), "args": args}


def blocks(config: dict) -> list[Block]:
    ax = grid_axes(config)
    mode = config["eval"]["block"]
    out = []
    for m in ax["models"]:
        for v in ax["variants"]:
            for ts in (ax["train_seeds"] if v in TUNED else [None]):
                for s in ax["seeds"]:
                    grid = tuple((t, tuple(ls), tuple(ds)) for t, (ls, ds) in ax["per_task"].items())
                    if mode == "seed":
                        out.append(Block(m, v, s, grid, ts))
                        continue
                    for t, ls, ds in grid:
                        for n in ls:
                            if mode == "length":
                                out.append(Block(m, v, s, ((t, (n,), ds),), ts))
                            else:
                                out.extend(Block(m, v, s, ((t, (n,), (d,)),), ts) for d in ds)
    return out


def eval_targets(config: dict) -> list[str]:
    """Every cell path of the configured grid (for the Snakefile's `all` and the aggregate rule's input).

    Cheap (no checks): workflow/rules/eval.smk runs check_eval(config) once while the Snakefile is parsed."""
    return [p for b in blocks(config) for p in b.paths()]
