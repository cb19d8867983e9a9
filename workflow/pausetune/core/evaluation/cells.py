"""A cell's identity and record: what determines its numbers (hashed into `cell_id`), the fields a cell file holds,
and the finished-cell cache (`results/.cells/{cell_id}.json`) that a failed or recut block's rerun reads; a block's
plan (its identity and which cells are done) and its prompts, built the one way eval and the benches build them.

`cell_id` is the sha256 of everything that determines the cell: coordinates, task, prompt, eval settings that change
answers (EVAL_RESULT_KEYS, the prefill grain and decode width among them: core.evaluation.engine), pause and split settings,
the model's prepared.json/config.json, the adapter's sha256, the haystack files' sha256, dtype, device type, kernels
and thread count, package versions and the generation code's fingerprint. What a run measures (seconds, reused
tokens, batch) goes to `results/timing/...`, never into the cell, so a cell is the same bytes on every run.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .. import layout
from ..io import PausetuneError, dumps_json, read_json, sha256_file, write_json

SCORING = "pausetune.core.evaluation.scoring"
STAGE = "pausetune.stages.eval"  # the generation code: that stage's import closure


def code_identity() -> dict:
    """The code a cell comes from: generation (this stage's import closure without scoring) and scoring apart, so
    a scoring edit rescores cached answers instead of regenerating them, and any other edit misses the cache."""
    from ..fingerprint import fingerprint
    from .scoring import scoring_code

    return {"generate": fingerprint(STAGE, exclude=(SCORING,)), "score": scoring_code()}

# eval keys that change a cell's answer: part of its identity and of the Snakemake rule's params. prefill_chunk and
# batch_size are among them: they fix the chunk and decode-batch shapes whose GEMM rounding a cell's numbers carry
# (core.evaluation.engine). reuse_prefix and block are not. Threads and the device type change the numbers too: they enter
# the identity through `kernels`, as the job finds them, not as config keys.
EVAL_RESULT_KEYS = ("buffer", "sentence_end", "needle_prefix", "max_new_tokens", "dtype", "judge", "haystack_sources",
                    "measure", "prefill_chunk", "batch_size", "closed_book")


def cell_measure(tok, inst, cp, pause_ids, what, plain: bool):
    """The engine's Measure for one cell (None when eval.measure is empty)."""
    from .engine import Measure

    if not what:
        return None
    prefix = " " if plain else ""
    answers = [tok.encode(prefix + a, add_special_tokens=False) for a in inst.answers]
    if any(not a for a in answers):
        raise PausetuneError(f"task '{inst.name}': an expected answer encodes to no tokens")
    spans = [(cp.needle_positions[i], cp.needle_positions[i] + cp.needle_lengths[i]) for i in inst.targets]
    return Measure(answers=answers, needles=spans, pause_ids=list(pause_ids or []), logprob="logprob" in what,
                   attention="attention" in what)


def measure_fields(inst, m: dict | None) -> dict:
    """A cell's measure fields from the engine's result (see the module doc)."""
    if not m:
        return {}
    out = {}
    if m.get("answer_logprob"):  # a task without answer texts has none
        out.update(answer_texts=list(inst.answers), answer_logprob=m["answer_logprob"],
                   answer_token_logprobs=m["answer_token_logprobs"],
                   answer_logprob_mean=round(sum(m["answer_logprob"]) / len(m["answer_logprob"]), 7),
                   needle_rank=m["needle_rank"], needle_margin=m["needle_margin"])
    a = m.get("attention")
    if a:
        def mean(xs):
            xs = [x for x in xs if x is not None]
            return round(sum(xs) / len(xs), 7) if xs else None

        # A sliding-window layer cannot see a needle further back than its window: the summary reads the
        # full-attention layers (all of them in a model without sliding layers).
        full = [i for i, t in enumerate(a.get("layer_types") or ["full"] * len(a["needle"])) if t == "full"]

        def over(key):
            return mean([a[key][i] for i in full])

        out.update(attention=a, needle_attention=over("needle"), pause_attention=over("pause"),
                   sink_attention=over("sink"), needle_attention_ratio=over("needle_ratio"))
    return out


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from ... import __version__

    out = {"pausetune": __version__}
    for pkg in ("torch", "transformers", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def model_fingerprint(model_dir: str | Path) -> str:
    from ..models import resolve_path

    path, _ = resolve_path(model_dir)
    h = hashlib.sha256()
    for f in (Path(model_dir) / "prepared.json", path / "config.json"):
        h.update(f.read_bytes() if f.exists() else b"-")
    return h.hexdigest()


def _entry(entry: dict | None) -> dict | None:
    """A models entry as part of a cell's identity: max_context only gates checks, it changes no answer."""
    return None if entry is None else {k: v for k, v in entry.items() if k != "max_context"}


def block_identity(config: dict, model: str, variant: str, model_dir, haystack_files, adapter_sha: str | None,
                   dtype: str, device_type: str, train_seed: int | None = None) -> dict:
    from ..design import ANSWER_PAUSES, POSITIONAL, uses_pause
    from ..kernels import cell_kernels

    ev = config["eval"]
    ident = {
        "model": model, "variant": variant, "train_seed": train_seed, "model_entry": _entry(config["models"][model]),
        "model_sha256": model_fingerprint(model_dir), "adapter_sha256": adapter_sha,
        "eval": {k: ev.get(k) for k in EVAL_RESULT_KEYS}, "prompt": config["prompt"],
        "pause": config["pause"] if uses_pause(variant) else None,
        "split": {"seed": config["seed"], **{k: config["shards"][k] for k in ("holdout_haystack", "haystack_fraction")}},
        "haystack": {str(Path(p).parent.name) + "/" + Path(p).stem: sha256_file(p) for p in haystack_files},
        "dtype": dtype, "device_type": device_type, "versions": versions(),
        "code_generate": code_identity()["generate"], "kernels": cell_kernels(device_type, dtype),
    }
    if variant in ANSWER_PAUSES:  # only this variant's cells depend on the count (the others' ids stay as they were)
        ident["answer_pauses"] = int(ev["answer_pauses"])
    if variant in POSITIONAL:
        ident["ms_poe"] = dict(ev["ms_poe"])
    if ev.get("judge") and ev["judge"].get("kind") == "local":
        ident["judge_model"] = _entry(config["models"].get(ev["judge"]["model"]))
    return ident


def cell_id(block_ident: dict, task_spec: dict, task: str, seed: int, length: int, depth: float) -> str:
    from ..design import format_depth

    data = {"block": block_ident, "task": task, "task_spec": task_spec, "seed": seed, "length": int(length),
            "depth": format_depth(depth)}
    return hashlib.sha256(dumps_json(data).encode()).hexdigest()


def _depth_value(d: float):
    return int(d) if float(d).is_integer() else float(d)


def timing_path(cell: Path, results: str) -> Path:
    return Path(layout.timing(str(cell), results))


def scan(cells: list, ident: dict, config: dict, *, model: str, variant: str, seed: int, results: str,
         cache_root: Path, force: bool = False, train_seed: int | None = None) -> tuple[list, list, dict]:
    """Which cells of a block are done. A cell in place or in the cache made by the same generation code counts; one
    whose scoring code changed since keeps its answer and is rescored. Returns (todo [(task, length, depth, cell_id,
    path)], restale [(cell, path)], counts {computed, cached, skipped, rescored}); cached cells are put in place."""
    from .grid import cell_path

    todo, restale = [], []
    counts = {"computed": 0, "cached": 0, "skipped": 0, "rescored": 0}
    score_code = code_identity()["score"]
    for t, n, d in cells:
        cid = cell_id(ident, config["tasks"][t], t, seed, n, d)
        out = Path(cell_path(model, variant, t, seed, n, d, results, train_seed))
        cached = Path(layout.cached_cell(cache_root, cid))
        if not force and out.exists():
            try:
                data = json.loads(out.read_text())
                if isinstance(data, dict) and data.get("cell_id") == cid:
                    if data.get("code", {}).get("score") == score_code:
                        counts["skipped"] += 1
                    else:
                        restale.append((data, out))
                    continue
            except (json.JSONDecodeError, OSError):
                pass
        if not force and cached.exists():
            try:
                data = read_json(cached)
                if data.get("cell_id") == cid:
                    if data.get("code", {}).get("score") == score_code:
                        write_json(out, data)
                        counts["cached"] += 1
                    else:
                        restale.append((data, out))
                    continue
            except PausetuneError:
                pass
        todo.append((t, n, d, cid, out))
    return todo, restale, counts


@dataclass
class BlockPlan:
    """One block of cells: what it is (identity, device, dtype) and what of it is left to do (scan)."""
    model: str
    variant: str
    seed: int
    train_seed: int | None  # a tuned variant's adapter's training seed
    device: str
    dtype: str  # what the model loads with: eval.dtype, or the model entry's (kernels.load_dtype)
    dtype_resolved: str  # what that is here, part of every cell's identity (kernels.dtype_name)
    device_type: str
    adapter_sha: str | None
    ident: dict
    todo: list  # [(task, length, depth, cell_id, path)]
    restale: list  # [(cell, path)]: answered by this code, scored by other code
    counts: dict  # {computed, cached, skipped, rescored}

    def pending_grid(self) -> dict:
        """{task: {lengths, depths}} of the cells left to compute (what the budget check must pass)."""
        grid: dict[str, dict] = {}
        for t, n, d, _, _ in self.todo:
            g = grid.setdefault(t, {"lengths": set(), "depths": set()})
            g["lengths"].add(n)
            g["depths"].add(d)
        return {t: {k: sorted(v) for k, v in g.items()} for t, g in grid.items()}


def plan_block(config: dict, *, model: str, variant: str, cells: list, seed: int, model_dir, haystack: list[str],
               checkpoint, results: str, cache_root: Path, device: str | None, force: bool,
               train_seed: int | None = None) -> BlockPlan:
    """The block's device and dtype, its identity, and which of its cells are done (in place or in the cache)."""
    import torch

    from ..training.checkpoints import check_checkpoint, checkpoint_adapter_hash
    from ..config import EvalConfig
    from ..design import CHECKPOINT
    from ..kernels import default_device, dtype_name, load_dtype
    from ..models import model_entry

    evc = EvalConfig.of(config)
    device = device or evc.device or default_device()
    dtype = load_dtype(evc.dtype, model_entry(config, model)["dtype"])
    resolved, device_type = dtype_name(dtype, device), torch.device(device).type
    adapter = None
    if variant in CHECKPOINT and checkpoint:
        check_checkpoint(checkpoint, variant, config, train_seed)
        adapter = checkpoint_adapter_hash(checkpoint)
    ident = block_identity(config, model, variant, model_dir, haystack, adapter, resolved, device_type, train_seed)
    todo, restale, counts = scan(cells, ident, config, model=model, variant=variant, seed=seed, results=results,
                                 cache_root=cache_root, force=force, train_seed=train_seed)
    return BlockPlan(model, variant, seed, train_seed, device, dtype, resolved, device_type, adapter, ident, todo,
                     restale, counts)


def build_prompts(tok, config: dict, model: str, stream: list[int], seed: int, cells: list, pause_ids=None,
                  closed: list | None = None, answer_pauses: list[int] | None = None) -> tuple[str, list]:
    """The prompt format and the (task instance, prompt) of each (task, length, depth) cell on a haystack stream:
    the one way eval and the benches build them (a bank task's needles come from the eval bank). `closed`, a list,
    receives each cell's closed-book prompt (closed_book_prompt); answer_pauses: ids after the question
    (pause-before-answer)."""
    from ..data.haystack import PromptBuilder
    from ..data.needles import build_task

    from ..data.banks import task_bank

    banks = {}  # the bank each bank task draws from (true: the in-template evaluation bank)
    for t in dict.fromkeys(t for t, _, _ in cells):
        which = config["tasks"][t].get("bank")
        if which and which not in banks:
            banks[which] = task_bank(config, which)
    builder = PromptBuilder(tok, config, model, pause_ids, answer_pauses=answer_pauses)
    out = []
    for t, n, d in cells:
        inst = build_task(t, config["tasks"][t], config["seed"], seed, n, d,
                          bank=banks.get(config["tasks"][t].get("bank")))
        out.append((inst, builder.build(stream, n, d, inst.needles, inst.question, task=t)))
        if closed is not None:
            closed.append(closed_book_prompt(builder, inst.question))
    return builder.format, out


def cell_record(plan: "BlockPlan", res, answer: str, inst, cp, task: str, length: int, depth: float, config: dict,
                prompt_format: str, haystack: dict, closed: dict | None = None, window: int | None = None) -> dict:
    """The cell file's fields (unscored): coordinates, prompt facts, answer, provenance, measures. res: the engine's
    Result for this cell."""
    spec, ident = config["tasks"][task], plan.ident
    cell = {
        "cell_id": res.key, "model": plan.model, "variant": plan.variant, "train_seed": plan.train_seed, "task": task,
        "kind": inst.kind,
        "seed": plan.seed, "length": int(length), "depth": _depth_value(depth),
        "context_tokens": len(cp.ids), "haystack_tokens": cp.haystack_tokens,
        "needle_tokens": cp.needle_tokens, "needle_positions": cp.needle_positions,
        "needle_depths": cp.needle_depths, "depth_actual": cp.depth_actual,
        # the needle's distance to the question (end of needle to the question's first token; the first needle's,
        # the farthest, and each one's) and the share of the model's window the length fills
        "needle_distance": cp.needle_distances[0] if cp.needle_distances else None,
        "needle_distances": cp.needle_distances,
        "window": window, "window_fill": round(int(length) / window, 6) if window else None,
        "needles": inst.needles, "question": inst.question,
        "expected": [[f] for f in inst.facts] if inst.kind not in ("single", "multi") or spec.get("bank")
        else spec["expected"],
        "facts": inst.facts, "reference": inst.reference, "answer": answer, "answer_tokens": len(res.new_ids),
        "prompt_sha256": cp.sha256(), "prompt_format": prompt_format,
        "haystack": haystack, "adapter_sha256": plan.adapter_sha, "model_sha256": ident["model_sha256"],
        "dtype": plan.dtype_resolved, "device_type": plan.device_type, "versions": ident["versions"],
        "eval": {k: config["eval"].get(k) for k in EVAL_RESULT_KEYS if k != "judge"},
        "code": {"generate": ident["code_generate"]}, "kernels": ident["kernels"],
    }
    if inst.keys:
        cell["ruler"] = inst.keys
    cell.update(measure_fields(inst, res.measures))
    if closed is not None:  # the same question with no haystack (scored with the cell: scoring.score_cell)
        cell["closed_book"] = closed
    return cell


def closed_book_prompt(builder, question: str) -> list[int]:
    """The cell's prompt with an empty document: the template's head and tail around nothing, no haystack token
    and no needle: what the model answers from its weights alone."""
    head, tail = builder.parts(question)
    return head + tail


def timing_record(device: str, timing: dict) -> dict:
    """What a run measured for one cell (its timing file, never the cell): the device and the engine's timings."""
    return {"device": str(device), **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in timing.items()}}


def store(cell: dict, out: Path, cache_root: Path, results: str, timing: dict | None = None) -> None:
    """The cache first (a computed answer is never lost), then the cell in place, then its timing beside it."""
    write_json(layout.cached_cell(cache_root, cell["cell_id"]), cell)
    write_json(out, cell)
    if timing is not None:
        write_json(timing_path(out, results), {"cell_id": cell["cell_id"], **timing})
