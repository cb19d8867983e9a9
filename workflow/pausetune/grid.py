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
from dataclasses import dataclass
from pathlib import Path

from .io import PausetuneError

VARIANTS = ("baseline", "pause-prompt", "pause-tuned", "plain-tuned")
PAUSED = {"baseline": False, "pause-prompt": True, "pause-tuned": True, "plain-tuned": False}
CHECKPOINT = {"pause-tuned": "pause", "plain-tuned": "plain"}  # tuned variant -> checkpoint variant
KINDS = ("single", "multi", "multikey", "multivalue", "multiquery")
BLOCKS = ("cell", "length", "seed")
CELL_PATTERN = "eval/{model}/{variant}/{task}/seed{seed}/len{length}/depth{depth}.json"  # under results/


# ---------------------------------------------------------------------------------------------------------
# Expansion


def expand_lengths(spec) -> list[int]:
    """A list as given, or {min, max, num, spacing: linear|log} (linear: the harness's rounded linspace)."""
    if isinstance(spec, list):
        return [int(x) for x in spec]
    lo, hi, num = int(spec["min"]), int(spec["max"]), int(spec["num"])
    if lo > hi:
        raise PausetuneError(f"config key 'eval.lengths': min {lo} > max {hi}")
    if num == 1:
        return [lo]
    if spec.get("spacing", "linear") == "log":
        vals = [lo * (hi / lo) ** (i / (num - 1)) for i in range(num)]
    else:
        vals = [lo + (hi - lo) * i / (num - 1) for i in range(num)]
    return sorted(set(int(round(v)) for v in vals))


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
        lo, hi, num = float(spec.get("min", 0)), float(spec.get("max", 100)), int(spec["num"])
        xs = [lo + (hi - lo) * i / (num - 1) for i in range(num)] if num > 1 else [lo]
        if spec.get("spacing", "linear") == "sigmoid":
            vals = [_logistic(x) for x in xs]
        else:
            vals = [float(round(x)) for x in xs]
    out = []
    for v in vals:
        if not 0 <= v <= 100:
            raise PausetuneError(f"config key 'eval.depths': depth {format_depth(v)} is outside 0-100")
        if v not in out:
            out.append(v)
    return sorted(out)


def format_depth(depth: float) -> str:
    d = float(depth)
    return str(int(d)) if d.is_integer() else repr(d)


def parse_depth(text: str) -> float:
    try:
        d = float(text)
    except ValueError:
        raise PausetuneError(f"depth '{text}': not a number") from None
    if not 0 <= d <= 100 or math.isnan(d):
        raise PausetuneError(f"config key 'eval.depths': depth {text} is outside 0-100")
    return d


def cell_path(model: str, variant: str, task: str, seed: int, length: int, depth: float,
              root: str = "results") -> str:
    rel = CELL_PATTERN.format(model=model, variant=variant, task=task, seed=seed, length=int(length),
                              depth=format_depth(depth))
    return f"{root.rstrip('/')}/{rel}" if root else rel


# ---------------------------------------------------------------------------------------------------------
# Blocks


@dataclass(frozen=True)
class Block:
    """Cells one job evaluates with one loaded model: per task, its lengths x depths (one shared haystack seed)."""
    model: str
    variant: str
    seed: int
    grid: tuple[tuple[str, tuple[int, ...], tuple[float, ...]], ...]  # (task, lengths, depths)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t, _, _ in self.grid)

    def cells(self) -> list[tuple[str, int, float]]:
        return [(t, n, d) for t, ls, ds in self.grid for n in ls for d in ds]

    def paths(self, root: str = "results") -> list[str]:
        return [cell_path(self.model, self.variant, t, self.seed, n, d, root) for t, n, d in self.cells()]


def task_axes(config: dict, task: str) -> tuple[list[int], list[float]]:
    """(lengths, depths) of one task: `eval.task_grid.<task>` where it sets them, else eval.lengths/depths."""
    ev = config["eval"]
    over = (ev.get("task_grid") or {}).get(task) or {}
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
            "seeds": list(ev["seeds"]), "per_task": per_task,
            "lengths": sorted({n for ls, _ in per_task.values() for n in ls}),
            "depths": sorted({d for _, ds in per_task.values() for d in ds})}


def blocks(config: dict) -> list[Block]:
    ax = grid_axes(config)
    mode = config["eval"].get("block", "length")
    out = []
    for m in ax["models"]:
        for v in ax["variants"]:
            for s in ax["seeds"]:
                grid = tuple((t, tuple(ls), tuple(ds)) for t, (ls, ds) in ax["per_task"].items())
                if mode == "seed":
                    out.append(Block(m, v, s, grid))
                    continue
                for t, ls, ds in grid:
                    for n in ls:
                        if mode == "length":
                            out.append(Block(m, v, s, ((t, (n,), ds),)))
                        else:
                            out.extend(Block(m, v, s, ((t, (n,), (d,)),)) for d in ds)
    return out


def eval_targets(config: dict) -> list[str]:
    """Every cell path of the configured grid (for the Snakefile's `all` and the aggregate rule's input).

    Cheap (no checks): workflow/rules/eval.smk runs check_eval(config) once while the Snakefile is parsed."""
    return [p for b in blocks(config) for p in b.paths()]


# ---------------------------------------------------------------------------------------------------------
# Checks

REQUIRED = {
    "single": ("needles", "question", "expected"),
    "multi": ("needles", "question", "expected"),
    "multikey": ("template", "question", "num_keys", "key_words"),
    "multivalue": ("template", "question", "num_values", "key_words"),
    "multiquery": ("template", "question", "num_keys", "num_queries", "key_words"),
}


def check_task(name: str, spec: dict) -> None:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise PausetuneError(f"config key 'tasks.{name}.kind': unknown kind '{kind}'; known: {list(KINDS)}")
    for key in REQUIRED[kind]:
        if spec.get(key) in (None, [], ""):
            raise PausetuneError(f"config key 'tasks.{name}.{key}': required for kind '{kind}'")
    if kind in ("single", "multi"):
        if kind == "single" and len(spec["needles"]) != 1:
            raise PausetuneError(f"config key 'tasks.{name}.needles': kind 'single' takes exactly one needle")
        if len(spec["expected"]) != len(spec["needles"]):
            raise PausetuneError(f"config key 'tasks.{name}.expected': one list of facts per needle "
                                 f"({len(spec['needles'])} needles, {len(spec['expected'])} lists)")
    else:
        for key in ("{key}", "{value}"):
            if key not in spec["template"]:
                raise PausetuneError(f"config key 'tasks.{name}.template': must contain {key}")
        if kind == "multiquery" and spec["num_queries"] > spec["num_keys"]:
            raise PausetuneError(f"config key 'tasks.{name}.num_queries': more queries than keys ({spec['num_keys']})")
        words = spec["key_words"]
        if len(set(words)) < 2:
            raise PausetuneError(f"config key 'tasks.{name}.key_words': needs at least two distinct words")


def check_eval(config: dict, prepared_root: str | Path | None = "data/models") -> None:
    """Config-level checks of the eval grid; one line naming the key. Tokenizer checks if models are prepared."""
    ev = config.get("eval", {})
    models = config.get("models", {})
    tasks = config.get("tasks", {})
    for m in ev.get("models", []):
        if m not in models:
            raise PausetuneError(f"config key 'eval.models': unknown model '{m}'; known: {sorted(models)}")
    for v in ev.get("variants", []):
        if v not in VARIANTS:
            raise PausetuneError(f"config key 'eval.variants': unknown variant '{v}'; known: {list(VARIANTS)}")
        if v in CHECKPOINT:
            for m in ev.get("models", []):
                if m not in config.get("train", {}).get("models", []):
                    raise PausetuneError(f"config key 'eval.variants': '{v}' needs a checkpoint of model '{m}', "
                                         f"which train.models does not list")
    for t in ev.get("tasks", []):
        if t not in tasks:
            raise PausetuneError(f"config key 'eval.tasks': unknown task '{t}'; known: {sorted(tasks)}")
        check_task(t, tasks[t])
    if ev.get("block", "length") not in BLOCKS:
        raise PausetuneError(f"config key 'eval.block': expected one of {list(BLOCKS)}")
    for s in ev.get("haystack_sources", []):
        if config.get("sources") and s not in config["sources"]:
            raise PausetuneError(f"config key 'eval.haystack_sources': unknown source '{s}'")
    for t in ev.get("task_grid") or {}:
        if t not in tasks:
            raise PausetuneError(f"config key 'eval.task_grid.{t}': unknown task '{t}'; known: {sorted(tasks)}")
    ev = {"lengths": [1000], "depths": [0], **ev}
    per_task = {t: task_axes({"eval": ev}, t) for t in ev.get("tasks", [])}
    lengths = sorted({n for ls, _ in per_task.values() for n in ls}) or expand_lengths(ev["lengths"])
    expand_depths(ev["depths"])
    if ev.get("block", "length") == "length" and len({tuple(ds) for _, ds in per_task.values()}) > 1:
        raise PausetuneError("config key 'eval.task_grid': tasks with different depths need eval.block seed or cell "
                             "(a length block's outputs are one depth list)")
    judge = ev.get("judge")
    if judge and judge.get("kind") == "local" and judge.get("model") not in models:
        raise PausetuneError(f"config key 'eval.judge.model': unknown model '{judge.get('model')}'")
    if judge and judge.get("kind") == "openai" and not (judge.get("base_url") and judge.get("model")):
        raise PausetuneError("config key 'eval.judge': kind 'openai' needs base_url and model")
    for m in ev.get("models", []):
        limit = models[m].get("max_context")
        for n in lengths:
            if limit and n + ev.get("max_new_tokens", 32) > limit:
                raise PausetuneError(f"config key 'eval.lengths': length {n} + eval.max_new_tokens "
                                     f"{ev.get('max_new_tokens', 32)} exceeds models.{m}.max_context {limit}")
    if prepared_root is not None:
        for m in ev.get("models", []):
            mdir = Path(prepared_root) / m
            if (mdir / "prepared.json").exists():
                check_budgets(config, m, mdir)


def check_block(config: dict, model: str, variant: str, tasks: list[str], lengths: list[int],
                depths: list[float]) -> None:
    """The CLI's checks of the one block it runs (its config may hold only this block's keys)."""
    models, ev = config.get("models", {}), config["eval"]
    if model not in models:
        raise PausetuneError(f"config key 'models': unknown model '{model}'; known: {sorted(models)}")
    if variant not in VARIANTS:
        raise PausetuneError(f"config key 'eval.variants': unknown variant '{variant}'; known: {list(VARIANTS)}")
    for t in tasks:
        if t not in config.get("tasks", {}):
            known = sorted(config.get("tasks", {}))
            raise PausetuneError(f"config key 'eval.tasks': unknown task '{t}'; known: {known}")
        check_task(t, config["tasks"][t])
    for d in depths:
        if not 0 <= float(d) <= 100:
            raise PausetuneError(f"config key 'eval.depths': depth {format_depth(d)} is outside 0-100")
    for n in lengths:
        if int(n) < 1:
            raise PausetuneError(f"config key 'eval.lengths': length {n} is not positive")
        limit = models[model].get("max_context")
        if limit and int(n) + ev["max_new_tokens"] > limit:
            raise PausetuneError(f"config key 'eval.lengths': length {n} + eval.max_new_tokens "
                                 f"{ev['max_new_tokens']} exceeds models.{model}.max_context {limit}")


_TOKENIZERS: dict = {}


def check_budgets(config: dict, model: str, model_dir: str | Path, tokenizer=None) -> None:
    """Every cell of the grid fits: window, needles and prompt inside each length, counted in the model's tokens."""
    from .haystack import PromptBuilder, budget
    from .models import max_context
    from .needles import build_task

    ev = config["eval"]
    if tokenizer is None:
        key = str(Path(model_dir).resolve())
        if key not in _TOKENIZERS:
            from .models import load_tokenizer

            _TOKENIZERS[key] = load_tokenizer(model_dir)
        tokenizer = _TOKENIZERS[key]
    limit = max_context(model_dir, config["models"][model])
    per_task = {t: task_axes(config, t) for t in ev["tasks"]}
    for n in sorted({n for ls, _ in per_task.values() for n in ls}):
        if n + ev["max_new_tokens"] > limit:
            raise PausetuneError(f"config key 'eval.lengths': length {n} + eval.max_new_tokens "
                                 f"{ev['max_new_tokens']} exceeds the context window of model '{model}' ({limit})")
    builder = PromptBuilder(tokenizer, config, model, boundaries=False)
    for t in ev["tasks"]:
        spec = config["tasks"][t]
        lengths, depths = per_task[t]
        fixed = spec["kind"] in ("single", "multi")  # the same needles in every cell: count them once
        for s in ev["seeds"][:1] if fixed else ev["seeds"]:
            for n in lengths:
                for d in depths[:1] if fixed else depths:
                    inst = build_task(t, spec, config.get("seed", 0), s, n, d)
                    nt = sum(len(x) for x in builder.encode_needles(inst.needles))
                    budget(n, ev, nt, builder.overhead(inst.question), task=t)
