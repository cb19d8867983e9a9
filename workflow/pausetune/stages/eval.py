"""Stage `eval`: one block of needle-in-a-haystack cells with one loaded model.

`pausetune eval --model M --variant V --tasks T.. --seed S --lengths N.. --depths D.. --model-dir data/models/M
--haystack data/paragraphs/{source}/{method}.parquet.. [--checkpoint results/checkpoints/M/{pause|plain}]`
writes `results/eval/{M}/{V}/{task}/seed{S}/len{N}/depth{D}.json` for every (task, length, depth) of the block.

- The model loads once. Variants: `baseline` (base model, plain haystack), `pause-prompt` (base model, the pause
  token added with an exact-mean embedding row, paused haystack), `pause-tuned` / `plain-tuned` (the pause /
  plain LoRA checkpoint merged into the base, paused / plain haystack).
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
  `logprob` adds `answer_texts` (the task's expected answers, see pausetune.core.needles: the needle sentence for
  single/multi, the value or variable name for the RULER kinds), `answer_logprob` (per answer: its summed
  teacher-forced log-prob after the prompt; the answer is encoded as it would follow the prompt, with a leading
  space after a plain template's "Answer:"), `answer_token_logprobs`, `answer_logprob_mean` (the mean over
  answers: the cell's continuous score), `needle_rank` (0 = greedy) and `needle_margin` of each answer's first
  token; `attention` adds `attention` (per-layer lists: shares of the last prompt token's attention on the target
  needles, pause tokens, the first 4 tokens and the rest; needle share / needle token share; the layer count) and
  its layer means `needle_attention`, `pause_attention`, `sink_attention`, `needle_attention_ratio`.
  See pausetune.core.engine for how they are computed on the cache the answer is generated from.
- Out of memory at some length fails the block with one line naming the length and batch size; the cells done
  before stay (files and cache).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..core import layout
from ..core.cells import (block_identity, cell_measure, cell_prompts, cell_record, scan, store, timing_path,
                          versions)
from ..core.config import EvalConfig, ShardsConfig
from ..core.io import PausetuneError, clean_dead_tmp, read_json, write_json


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


# ---------------------------------------------------------------------------------------------------------


def load_variant(variant: str, config: dict, model: str, model_dir, checkpoint, dtype: str, device: str):
    """(model, tokenizer, pause_ids or None, adapter_sha256 or None, checkpoint manifest or None)."""
    from ..core.design import CHECKPOINT, PAUSED
    from ..core.models import load_model, load_tokenizer
    from ..core.tokens import fit_embeddings, setup_pause

    manifest = None
    adapter = None
    if variant in CHECKPOINT:
        from ..core.checkpoints import checkpoint_adapter_hash, load_checkpoint

        if not checkpoint:
            raise PausetuneError(f"eval {variant}: --checkpoint results/checkpoints/{model}/{CHECKPOINT[variant]} "
                                 "is required")
        mf = read_json(Path(checkpoint) / "manifest.json")
        if mf.get("variant") not in (None, CHECKPOINT[variant]):
            raise PausetuneError(f"{checkpoint}: a '{mf.get('variant')}' checkpoint, variant {variant} needs "
                                 f"'{CHECKPOINT[variant]}'")
        if PAUSED[variant]:  # the markers the haystack gets must be those the adapter was trained with
            from ..core.config import PauseConfig

            trained, asked = PauseConfig.from_dict(mf.get("pause") or {}), PauseConfig.of(config)
            if trained != asked:
                raise PausetuneError(f"{checkpoint}: trained with pause {trained.to_dict()}, config 'pause' is "
                                     f"{asked.to_dict()}: retrain it, or set config 'pause' back")
        adapter = checkpoint_adapter_hash(checkpoint)
        net, tok, manifest = load_checkpoint(model_dir, checkpoint, dtype=dtype, device=device)
    else:
        tok = load_tokenizer(model_dir)
        net = load_model(model_dir, dtype, device)
    pause_ids = None
    if PAUSED[variant]:
        pause_ids = setup_pause(tok, config["pause"])
        fit_embeddings(net, tok)  # no-op unless the tokenizer grew (pause-prompt, special mode)
    if net.get_input_embeddings().weight.shape[0] < len(tok):
        raise PausetuneError(f"model '{model}': embedding has fewer rows than the tokenizer ({len(tok)})")
    return net, tok, pause_ids, adapter, manifest


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
              device: str | None = None, force: bool = False, log=print) -> dict:
    """Evaluate one block, cells (task, length, depth) of one haystack seed: plan (what is done) -> load -> prompts
    -> generate -> store. Returns {computed, cached, skipped, rescored}."""
    import torch

    from ..core.checks import check_block, check_budgets, check_judge
    from ..core.design import CHECKPOINT, PAUSED, format_depth
    from ..core.engine import Engine, Request, eos_ids_of
    from ..core.grid import cell_path
    from ..core.haystack import PromptBuilder, build_stream, essay_order, haystack_ids, load_essays, stream_meta
    from ..core.models import default_device, load_tokenizer, model_entry, torch_dtype
    from ..core.scoring import make_judge, score_cell

    # 1. Plan: the block's identity, and which of its cells are done (in place, or in the finished-cell cache).
    ev = config["eval"]
    tasks = list(dict.fromkeys(t for t, _, _ in cells))
    check_block(config, model, variant, tasks, sorted({n for _, n, _ in cells}), sorted({d for _, _, d in cells}))
    evc = EvalConfig.of(config)
    device = device or evc.device or default_device()
    dname = evc.dtype if evc.dtype != "auto" else model_entry(config, model)["dtype"]
    dtype_resolved = str(torch_dtype(dname, device)).replace("torch.", "")
    device_type = torch.device(device).type
    if evc.threads:
        torch.set_num_threads(evc.threads)
    cache_root = Path(cells_cache or Path(results) / Path(layout.CELLS_CACHE).name)
    # A killed job's temp files here (the cache, this block's cell and timing folders); blocks run in parallel into
    # the same folders, so only those whose writer is gone.
    block_dirs = {Path(cell_path(model, variant, t, seed, n, d, results)).parent for t, n, d in cells}
    clean_dead_tmp(cache_root, *block_dirs, *(timing_path(c, results) for c in block_dirs))
    adapter_sha = None
    if variant in CHECKPOINT and checkpoint:
        from ..core.checkpoints import checkpoint_adapter_hash

        adapter_sha = checkpoint_adapter_hash(checkpoint)
    ident = block_identity(config, model, variant, model_dir, haystack, adapter_sha, dtype_resolved, device_type)
    todo, restale, counts = scan(cells, ident, config, model=model, variant=variant, seed=seed, results=results,
                                 cache_root=cache_root, force=force)
    if restale or todo:
        check_judge(ev.get("judge"))  # before any model loads
    if restale:
        call = make_judge(config, judge_model_dir, dname, device)
        for data, out in restale:
            store(score_cell(data, ev.get("judge"), call), out, cache_root, results)
            counts["rescored"] += 1
    rescored = f", {counts['rescored']} rescored" if counts["rescored"] else ""
    if not todo:
        log(f"eval {model}/{variant} seed{seed}: nothing to do ({counts['skipped']} done, {counts['cached']} "
            f"from the cell cache{rescored})")
        return counts

    # 2. Load: sizes first (tokenizer only: one-line errors before any weights load), then model and haystack.
    mine: dict[str, dict] = {}  # this block's pending grid, per task
    for t, n, d, _, _ in todo:
        g = mine.setdefault(t, {"lengths": set(), "depths": set()})
        g["lengths"].add(n)
        g["depths"].add(d)
    mine = {t: {k: sorted(v) for k, v in g.items()} for t, g in mine.items()}
    check_budgets(config | {"eval": {**ev, "tasks": list(mine), "task_grid": mine, "seeds": [seed]}}, model,
                  model_dir, tokenizer=load_tokenizer(model_dir))
    essays = load_essays(haystack)
    hay_ids = haystack_ids([e for e, _ in essays], config)
    _check_holdout(hay_ids, shard_manifest, config)
    net, tok, pause_ids, adapter_sha2, _ = load_variant(variant, config, model, model_dir, checkpoint, dname, device)
    adapter_sha = adapter_sha or adapter_sha2

    # 3. Prompts: one token stream per seed, each cell's needles and question placed in it.
    order = essay_order(hay_ids, seed)
    builder = PromptBuilder(tok, config, model, pause_ids)
    bank = None
    if any(config["tasks"][t].get("bank") for t in tasks):
        from ..core.banks import check_banks

        bank = check_banks(config)[1]
    stream = build_stream(tok, dict(essays), order, max(n for _, n, _, _, _ in todo), pause_ids)
    hmeta = stream_meta(haystack, order, Path(haystack[0]).stem, PAUSED[variant], config["pause"])
    if pause_ids:
        hmeta["pause_ids"] = list(pause_ids)
    built = dict(zip((cid for _, _, _, cid, _ in todo),
                     cell_prompts(builder, stream, config, seed, [(t, n, d) for t, n, d, _, _ in todo], bank)))
    requests = [Request(cid, cp.ids, cp.shareable,
                        cell_measure(tok, inst, cp, pause_ids, evc.measure, builder.format == "plain"))
                for cid, (inst, cp) in built.items()]

    # 4. Generate, and store each cell as soon as it is answered.
    engine = Engine(net, eos_ids_of(net, tok), evc.max_new_tokens, batch_size=evc.batch_size,
                    reuse_prefix=evc.reuse_prefix, prefill_chunk=evc.prefill_chunk,
                    linear=ident["kernels"].get("linear_fp32"))
    judge_call = make_judge(config, judge_model_dir, dname, device)
    vers = versions()
    info = {cid: (t, n, d, out) for t, n, d, cid, out in todo}
    done_lengths: set = set()
    t_block = time.perf_counter()
    try:
        for res in engine.run(requests):
            t, n, d, out = info[res.key]
            inst, cp = built[res.key]
            cell = cell_record(key=res.key, answer=tok.decode(res.new_ids, skip_special_tokens=True).strip(),
                               new_ids=res.new_ids, measures=res.measures, inst=inst, cp=cp, task=t, seed=seed,
                               length=n, depth=d, model=model, variant=variant, config=config,
                               prompt_format=builder.format, haystack=hmeta, adapter_sha=adapter_sha, ident=ident,
                               dtype=dtype_resolved, device_type=device_type, versions=vers)
            if judge_call is not None:  # the answer first, unscored: a judge failure must not lose it (the rerun
                write_json(layout.cached_cell(cache_root, res.key), cell)  # finds it in the cache and only scores it)
            cell = score_cell(cell, ev.get("judge"), judge_call)
            store(cell, out, cache_root, results, {"device": str(device), **{
                k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.timing.items()}})
            counts["computed"] += 1
            done_lengths.add(n)
            log(f"eval {model}/{variant}/{t} seed{seed} len{n} depth{format_depth(d)}: score {cell['score']:g} "
                f"({cell['context_tokens']} tokens, prefill {res.timing['prefill_s']:.2f}s, "
                f"reused {res.timing['shared_prefix_tokens']})")
    except Exception as e:
        if not is_oom(e):
            raise
        block_lengths = {info[r.key][1] for r in requests}
        pending = sorted(block_lengths - done_lengths) or sorted(block_lengths)
        raise PausetuneError(
            f"out of memory at length {pending[0]} (eval.batch_size {engine.batch_size}, "
            f"{'prefix reuse' if engine.reuse else 'no reuse'}, device {device}); {counts['computed']} cells of this "
            f"block were finished and kept; lower eval.batch_size or eval.prefill_chunk, or drop the length"
        ) from None
    log(f"eval {model}/{variant} seed{seed}: {counts['computed']} computed, {counts['cached']} from cache{rescored}, "
        f"{counts['skipped']} already done, {time.perf_counter() - t_block:.1f}s")
    return counts


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="name of an entry of config 'models'")
    p.add_argument("--variant", required=True, help="baseline | pause-prompt | pause-tuned | plain-tuned")
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
    p.add_argument("--checkpoint", default=None,
                   help="tuned variants (default results/checkpoints/{model}/{pause|plain})")
    p.add_argument("--shard-manifest", default=None,
                   help="holdout check (default, tuned variants: data/shards/{model}/{pause|plain}/manifest.json)")
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
    from ..core.design import parse_depth
    from ..core.grid import task_axes

    out = []
    for t in tasks:  # unknown task names: run_block's check_block says so
        ls, ds = task_axes(config, t) if lengths is None or depths is None else (None, None)
        ls = lengths if lengths is not None else ls
        ds = [parse_depth(d) for d in depths] if depths is not None else ds
        out += [(t, int(n), float(d)) for n in ls for d in ds]
    return out


def main(args, config: dict) -> int:
    from ..core.design import CHECKPOINT

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
    if v in CHECKPOINT:
        if not checkpoint:
            checkpoint = layout.CHECKPOINT.format(model=m, variant=CHECKPOINT[v])
            if not (Path(checkpoint) / "manifest.json").exists():
                raise PausetuneError(f"eval {v}: no checkpoint at {checkpoint} (train it first, or pass --checkpoint DIR)")
        default_shards = Path(layout.manifest(layout.train_data(m, CHECKPOINT[v], config["train"]["objective"])))
        shard_manifest = shard_manifest or (str(default_shards) if default_shards.exists() else None)
    judge = ev.get("judge")
    judge_dir = args.judge_model_dir or (layout.MODEL.format(model=judge["model"]) if judge and judge["kind"] == "local"
                                         else None)
    run_block(config, model=m, variant=v, cells=block_cells(config, args.tasks or ev["tasks"], args.lengths,
                                                            args.depths), seed=args.seed,
              model_dir=args.model_dir or layout.MODEL.format(model=m), haystack=haystack, checkpoint=checkpoint,
              shard_manifest=shard_manifest, judge_model_dir=judge_dir, results=args.results,
              cells_cache=args.cells_cache, device=args.device, force=args.force,
              log=lambda msg: print(msg, file=sys.stderr, flush=True))
    return 0
