"""Stage `eval`: one block of needle-in-a-haystack cells with one loaded model.

`pausetune eval --model M --variant V --tasks T.. --seed S --lengths N.. --depths D.. --model-dir data/models/M
--haystack data/paragraphs/{source}/{method}.parquet.. [--train-seed R --checkpoint results/checkpoints/M/{pause|plain}/tseedR]`
writes `results/eval/{M}/{V}/{task}/seed{S}/len{N}/depth{D}.json` (a tuned variant: `results/eval/{M}/{V}/tseed{R}/
{task}/...`) for every (task, length, depth) of the block.

- The model loads once. Variants: `baseline` (base model, plain haystack), `pause-prompt` (base model, the pause
  token added with an exact-mean embedding row, paused haystack), `pause-tuned` / `plain-tuned` (the pause /
  plain LoRA checkpoint of training seed R merged into the base, paused / plain haystack), and the crossed
  `pause-tuned-on-plain` (pause weights, plain haystack) / `plain-tuned-on-paused` (plain weights, paused haystack,
  the pause token added as for pause-prompt); the reference arm `pause-before-answer` (base model, plain haystack,
  eval.answer_pauses pause markers spliced in right after the question: time to think, no training) and `ms-poe`
  (base model, plain haystack, Ms-PoE's per-head RoPE position scaling, eval.ms_poe; core.positional).
- `eval.closed_book`: each cell also answers its question with the document left empty (no haystack, no needle),
  scored as the cell is: `closed_book` {answer, answer_tokens, recall, exact, score}, the guess rate.
- Each cell is written atomically as soon as it is answered, and also kept in `results/.cells/{cell_id}.json`
  (`cell_id`: sha256 of everything that determines the cell: coordinates, task, prompt, eval settings that change
  answers, pause and split settings, the model's prepared.json/config.json, the adapter's sha256, the haystack
  files' sha256, dtype, device type, package versions). Snakemake deletes a failed job's outputs; the rerun
  finds the finished cells in that cache and computes only the rest. A cell file already in place with the same
  cell_id is skipped (`--force` recomputes).
- A cell is deterministic: two runs of it give byte-identical files. What a run measures (prefill and decode
  seconds, tokens reused from another cell's prefix, batch) depends on the machine and on which cells shared the
  job, so it goes to `results/timing/{M}/{V}/{task}/seed{S}/len{N}/depth{D}.json`, never into the cell.
- Measures (config `eval.measure`, default both; part of the cell id, so cells with and without them never mix):
  `logprob` adds `answer_texts` (the task's expected answers, see pausetune.core.data.needles: the needle sentence for
  single/multi, the value or variable name for the RULER kinds), `answer_logprob` (per answer: its summed
  teacher-forced log-prob after the prompt; the answer is encoded as it would follow the prompt, with a leading
  space after a plain template's "Answer:"), `answer_token_logprobs`, `answer_logprob_mean` (the mean over
  answers: the cell's continuous score), `needle_rank` (0 = greedy) and `needle_margin` of each answer's first
  token; `attention` adds `attention` (per-layer lists: shares of the last prompt token's attention on the target
  needles, pause tokens, the first 4 tokens and the rest; needle share / needle token share; the layer count) and
  its layer means `needle_attention`, `pause_attention`, `sink_attention`, `needle_attention_ratio`.
  See pausetune.core.evaluation.engine for how they are computed on the cache the answer is generated from.
- Out of memory at some length fails the block with one line naming the length and batch size; the cells done
  before stay (files and cache).
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from ..core import layout
from ..core.evaluation.cells import build_prompts, cell_measure, cell_record, plan_block, store, timing_record
from ..core.evaluation.variants import load_variant
from ..core.checks import check_block, check_budgets, check_judge
from ..core.config import EvalConfig, ShardsConfig, train_seed_of
from ..core.design import ANSWER_PAUSES, CHECKPOINT, PAUSED, VARIANTS, format_depth, parse_depth
from ..core.evaluation.grid import task_axes
from ..core.data.haystack import build_stream, essay_order, haystack_ids, load_essays, stream_meta
from ..core.io import PausetuneError, read_json, write_json
from ..core.kernels import set_threads
from ..core.models import load_tokenizer, max_context
from ..core.evaluation.scoring import make_judge, score_cell


def _check_holdout(hay_ids: list[str], shard_manifest: str | None, config: dict) -> None:
    if not shard_manifest or not ShardsConfig.of(config).holdout_haystack:
        return
    m = read_json(shard_manifest)
    trained = set()
    for split in ("train", "validation"):
        trained.update(m.get("splits", {}).get(split, {}).get("order", []))
    leak = sorted(set(hay_ids) & trained)
    if leak:
        raise PausetuneError(f"{shard_manifest}: haystack essay '{leak[0]}' was used in training "
                             f"({len(leak)} in all); shards and eval disagree on the split (seed / shards keys)")


def run_block(config: dict, *, model: str, variant: str, cells: list[tuple[str, int, float]], seed: int,
              model_dir, haystack: list[str], checkpoint=None, shard_manifest=None,
              judge_model_dir=None, results: str = layout.RESULTS, cells_cache: str | None = None,
              device: str | None = None, force: bool = False, log=print, train_seed: int | None = None) -> dict:
    """Evaluate one block, cells (task, length, depth) of one haystack seed: plan (what is done) -> load -> prompts
    -> generate -> store. Returns {computed, cached, skipped, rescored}."""
    from ..core.evaluation.engine import Engine, Request, eos_ids_of  # torch: imported when a block runs

    # 1. Plan: the block's identity, and which of its cells are done (in place, or in the finished-cell cache).
    ev, evc = config["eval"], EvalConfig.of(config)
    check_block(config, model, variant, list(dict.fromkeys(t for t, _, _ in cells)), sorted({n for _, n, _ in cells}),
                sorted({d for _, _, d in cells}))
    set_threads(evc.threads)
    cache_root = Path(cells_cache or Path(results) / Path(layout.CELLS_CACHE).name)
    if (variant in CHECKPOINT) != (train_seed is not None):
        raise PausetuneError(f"eval {variant}: " + ("a tuned variant needs --train-seed (one of config train.seeds)"
                                                    if variant in CHECKPOINT else "--train-seed is for tuned variants"))
    name = f"{model}/{variant}" + (f"/tseed{train_seed}" if train_seed is not None else "")
    plan = plan_block(config, model=model, variant=variant, cells=cells, seed=seed, model_dir=model_dir,
                      haystack=haystack, checkpoint=checkpoint, results=results, cache_root=cache_root,
                      device=device, force=force, train_seed=train_seed)
    counts = plan.counts
    if plan.restale or plan.todo:
        check_judge(ev.get("judge"))  # before any model loads
    _rescore(plan, config, judge_model_dir, cache_root, results)
    rescored = f", {counts['rescored']} rescored" if counts["rescored"] else ""
    if not plan.todo:
        log(f"eval {name} seed{seed}: nothing to do ({counts['skipped']} done, {counts['cached']} "
            f"from the cell cache{rescored})")
        return counts

    # 2. Load: sizes first (tokenizer only: one-line errors before any weights load), then haystack and model.
    pending = plan.pending_grid()
    check_budgets(config | {"eval": {**ev, "tasks": list(pending), "task_grid": pending, "seeds": [seed]}}, model,
                  model_dir, tokenizer=load_tokenizer(model_dir), answer_pauses=variant in ANSWER_PAUSES)
    essays = load_essays(haystack)
    hay_ids = haystack_ids([e for e, _ in essays], config)
    _check_holdout(hay_ids, shard_manifest, config)
    net, tok, pause_ids = load_variant(variant, config, model, model_dir, checkpoint, plan.dtype, plan.device)

    # 3. Prompts: one token stream per seed, each cell's needles and question placed in it.
    # (pause-before-answer: the markers after the question only, the haystack plain)
    order = essay_order(hay_ids, seed)
    hay_pauses = pause_ids if PAUSED[variant] else None
    stream = build_stream(tok, dict(essays), order, max(n for _, n, _, _, _ in plan.todo), hay_pauses)
    hmeta = stream_meta(haystack, order, Path(haystack[0]).stem, PAUSED[variant], config["pause"], hay_pauses)
    closed: list | None = [] if evc.closed_book else None
    after = pause_ids * int(ev["answer_pauses"]) if variant in ANSWER_PAUSES else None
    fmt, prompts = build_prompts(tok, config, model, stream, seed, [(t, n, d) for t, n, d, _, _ in plan.todo],
                                 hay_pauses, closed, answer_pauses=after)
    todo = {cid: (t, n, d, out, inst, cp) for (t, n, d, cid, out), (inst, cp) in zip(plan.todo, prompts)}
    requests = [Request(cid, cp.ids, cp.shareable, cell_measure(tok, inst, cp, pause_ids, evc.measure, fmt == "plain"))
                for cid, (_, _, _, _, inst, cp) in todo.items()]

    # 4. Generate, and 5. store each cell as soon as it is answered (out of memory: one line, the done cells kept).
    engine = Engine(net, eos_ids_of(net, tok), evc.max_new_tokens, batch_size=evc.batch_size,
                    reuse_prefix=evc.reuse_prefix, prefill_chunk=evc.prefill_chunk,
                    linear=plan.ident["kernels"].get("linear_fp32"))
    judge_call = make_judge(config, judge_model_dir, plan.dtype, plan.device)
    window = max_context(model_dir, config["models"].get(model))
    t_block = time.perf_counter()
    closed_answers = _closed_book(engine, tok, closed) if closed is not None else {}
    closed_of = dict(zip(todo, map(tuple, closed or [])))  # cell id -> its closed-book prompt
    with _out_of_memory_as_error(engine, plan, {n for _, n, *_ in todo.values()}) as done_lengths:
        for res in engine.run(requests):
            t, n, d, out, inst, cp = todo[res.key]
            answer = tok.decode(res.new_ids, skip_special_tokens=True).strip()
            cb = closed_answers[closed_of[res.key]] if closed is not None else None
            cell = cell_record(plan, res, answer, inst, cp, t, n, d, config, fmt, hmeta, cb, window)
            if judge_call is not None:  # the answer first, unscored: a judge failure must not lose it (the rerun
                write_json(layout.cached_cell(cache_root, res.key), cell)  # finds it in the cache and only scores it)
            cell = score_cell(cell, ev.get("judge"), judge_call)
            store(cell, out, cache_root, results, timing_record(plan.device, res.timing))
            counts["computed"] += 1
            done_lengths.add(n)
            log(f"eval {name}/{t} seed{seed} len{n} depth{format_depth(d)}: score {cell['score']:g} "
                f"({cell['context_tokens']} tokens, prefill {res.timing['prefill_s']:.2f}s, "
                f"reused {res.timing['shared_prefix_tokens']})")
    log(f"eval {name} seed{seed}: {counts['computed']} computed, {counts['cached']} from cache{rescored}, "
        f"{counts['skipped']} already done, {time.perf_counter() - t_block:.1f}s")
    return counts


def _closed_book(engine, tok, prompts: list[list[int]]) -> dict:
    """Each distinct closed-book prompt answered once (a question shared by cells is asked once): {ids: {answer,
    answer_tokens}}; unscored (scoring.score_cell scores it with the cell's facts)."""
    from ..core.evaluation.engine import Request

    distinct = list(dict.fromkeys(tuple(p) for p in prompts))
    out = {}
    for res in engine.run([Request(i, list(p)) for i, p in enumerate(distinct)]):
        out[distinct[res.key]] = {"answer": tok.decode(res.new_ids, skip_special_tokens=True).strip(),
                                  "answer_tokens": len(res.new_ids), "prompt_tokens": len(distinct[res.key])}
    return out


def _rescore(plan, config: dict, judge_model_dir, cache_root: Path, results: str) -> None:
    """Cells answered by this generation code but scored by other scoring code: scored again, answers kept."""
    if plan.restale:
        call = make_judge(config, judge_model_dir, plan.dtype, plan.device)
        for data, out in plan.restale:
            store(score_cell(data, config["eval"].get("judge"), call), out, cache_root, results)
            plan.counts["rescored"] += 1


@contextlib.contextmanager
def _out_of_memory_as_error(engine, plan, lengths: set[int]):
    """Within: out of memory is one line naming the first length not finished (the yielded set holds the finished
    ones) and the batch; the cells stored before stay."""
    from ..core.evaluation.engine import is_oom

    done: set[int] = set()
    try:
        yield done
    except Exception as e:
        if not is_oom(e):
            raise
        left = sorted(lengths - done) or sorted(lengths)
        raise PausetuneError(
            f"out of memory at length {left[0]} (eval.batch_size {engine.batch_size}, "
            f"{'prefix reuse' if engine.reuse else 'no reuse'}, device {plan.device}); {plan.counts['computed']} cells "
            f"of this block were finished and kept; lower eval.batch_size or eval.prefill_chunk, or drop the length"
        ) from None


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="name of an entry of config 'models'")
    p.add_argument("--variant", required=True, help=" | ".join(VARIANTS))
    p.add_argument("--seed", type=int, required=True, help="haystack seed (essay order)")
    p.add_argument("--tasks", nargs="+", default=None, help="names of config 'tasks' entries (default: eval.tasks)")
    p.add_argument("--lengths", nargs="+", type=int, default=None,
                   help="context lengths in tokens (default: each task's grid from config eval)")
    p.add_argument("--depths", nargs="+", default=None,
                   help="needle depths in percent, as in the cell paths (default: each task's grid from config)")
    p.add_argument("--model-dir", default=None, help="default data/models/{model}")
    p.add_argument("--haystack", nargs="+", default=None,
                   help="paragraph parquet(s) (default: data/paragraphs/{source}/{paragraphs.method}.parquet of "
                        "eval.haystack_sources)")
    p.add_argument("--train-seed", type=int, default=None,
                   help="tuned variants: the training seed of the adapter (one of config train.seeds; default its first)")
    p.add_argument("--checkpoint", default=None,
                   help=f"tuned variants (default {layout.CHECKPOINT}, variant pause | plain)")
    p.add_argument("--shard-manifest", default=None,
                   help="holdout check (default, tuned variants: the manifest of the data the checkpoint trained on)")
    p.add_argument("--judge-model-dir", default=None, help="data/models/{judge} (eval.judge kind local)")
    p.add_argument("--results", default=layout.RESULTS, help="results root (cells go to RESULTS/eval/...)")
    p.add_argument("--cells-cache", default=None, help="finished-cell cache (default RESULTS/.cells)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: eval.device, else cuda if any)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: eval.threads)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows of every decode step (default: eval.batch_size; part of a cell's identity)")
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="the prefill grain in tokens (default: eval.prefill_chunk; part of a cell's identity)")
    p.add_argument("--no-reuse", action="store_true", help="no prefix-KV reuse (every cell prefilled alone)")
    p.add_argument("--force", action="store_true", help="recompute cells that are done or cached")


def block_cells(config: dict, tasks: list[str], lengths: list[int] | None, depths: list[str] | None) -> list:
    """The cells a CLI call evaluates: the given lengths x depths, or each task's configured grid."""
    out = []
    for t in tasks:  # unknown task names: run_block's check_block says so
        ls, ds = task_axes(config, t) if lengths is None or depths is None else (None, None)
        ls = lengths if lengths is not None else ls
        ds = [parse_depth(d) for d in depths] if depths is not None else ds
        out += [(t, int(n), float(d)) for n in ls for d in ds]
    return out


def main(args, config: dict) -> int:
    ev = config["eval"]
    if args.threads:
        ev["threads"] = args.threads
    if args.batch_size:
        ev["batch_size"] = args.batch_size
    if args.prefill_chunk:
        ev["prefill_chunk"] = args.prefill_chunk
    if args.no_reuse:
        ev["reuse_prefix"] = False
    m, v = args.model, args.variant
    method = ev.get("paragraph_method") or config["paragraphs"]["method"]
    haystack = args.haystack or [layout.PARAGRAPHS.format(source=s, method=method) for s in ev["haystack_sources"]]
    checkpoint, shard_manifest = args.checkpoint, args.shard_manifest
    tseed = None
    if v in CHECKPOINT:
        tseed = train_seed_of(config, args.train_seed)
        if not checkpoint:
            checkpoint = layout.checkpoint(m, CHECKPOINT[v], tseed)
            if not (Path(checkpoint) / "manifest.json").exists():
                raise PausetuneError(f"eval {v}: no checkpoint at {checkpoint} (train it first, or pass --checkpoint DIR)")
        default_shards = Path(layout.manifest(layout.train_data(m, CHECKPOINT[v], config["train"]["objective"], tseed)))
        shard_manifest = shard_manifest or (str(default_shards) if default_shards.exists() else None)
    elif args.train_seed is not None:
        raise PausetuneError(f"eval {v}: --train-seed is for tuned variants (an untrained variant has no adapter)")
    judge = ev.get("judge")
    judge_dir = args.judge_model_dir or (layout.MODEL.format(model=judge["model"]) if judge and judge["kind"] == "local"
                                         else None)
    run_block(config, model=m, variant=v, cells=block_cells(config, args.tasks or ev["tasks"], args.lengths,
                                                            args.depths), seed=args.seed,
              model_dir=args.model_dir or layout.MODEL.format(model=m), haystack=haystack, checkpoint=checkpoint,
              shard_manifest=shard_manifest, judge_model_dir=judge_dir, results=args.results,
              cells_cache=args.cells_cache, device=args.device, force=args.force,
              log=lambda msg: print(msg, file=sys.stderr, flush=True), train_seed=tseed)
    return 0
