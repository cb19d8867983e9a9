"""Stage `eval`: one block of needle-in-a-haystack cells with one loaded model.

`pausetune eval --model M --variant V --tasks T.. --seed S --lengths N.. --depths D.. --model-dir data/models/M
--haystack data/paused/{source}/{method}.parquet.. [--checkpoint results/checkpoints/M/{pause|plain}]`
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

import hashlib
import json
import sys
import time
from pathlib import Path

from ..core import layout
from ..core.config import EvalConfig, ShardsConfig
from ..core.fingerprint import fingerprint
from ..core.io import PausetuneError, clean_dead_tmp, dumps_json, read_json, sha256_file, write_json

SCORING = "pausetune.core.scoring"


def code_identity() -> dict:
    """The code a cell comes from: generation (this stage's import closure without scoring) and scoring apart, so
    a scoring edit rescores cached answers instead of regenerating them, and any other edit misses the cache."""
    from ..core.scoring import scoring_code

    return {"generate": fingerprint(__name__, exclude=(SCORING,)), "score": scoring_code()}

# eval keys that change a cell's answer: part of its identity and of the Snakemake rule's params. prefill_chunk and
# batch_size are among them: they fix the chunk and decode-batch shapes whose GEMM rounding a cell's numbers carry
# (core.engine). reuse_prefix, block, threads (in `kernels`), device (its type is) are not.
EVAL_RESULT_KEYS = ("buffer", "sentence_end", "needle_prefix", "max_new_tokens", "dtype", "judge", "haystack_sources",
                    "measure", "prefill_chunk", "batch_size")


def cell_measure(tok, inst, cp, pause_ids, what, plain: bool):
    """The engine's Measure for one cell (None when eval.measure is empty)."""
    from ..core.engine import Measure

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

        out.update(attention=a, needle_attention=mean(a["needle"]), pause_attention=mean(a["pause"]),
                   sink_attention=mean(a["sink"]), needle_attention_ratio=mean(a["needle_ratio"]))
    return out


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"pausetune": __version__}
    for pkg in ("torch", "transformers", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def model_fingerprint(model_dir: str | Path) -> str:
    from ..core.models import resolve_path

    path, _ = resolve_path(model_dir)
    h = hashlib.sha256()
    for f in (Path(model_dir) / "prepared.json", path / "config.json"):
        h.update(f.read_bytes() if f.exists() else b"-")
    return h.hexdigest()


def _entry(entry: dict | None) -> dict | None:
    """A models entry as part of a cell's identity: max_context only gates checks, it changes no answer."""
    return None if entry is None else {k: v for k, v in entry.items() if k != "max_context"}


def block_identity(config: dict, model: str, variant: str, model_dir, haystack_files, adapter_sha: str | None,
                   dtype: str, device_type: str) -> dict:
    from ..core.design import PAUSED

    ev = config["eval"]
    ident = {
        "model": model, "variant": variant, "model_entry": _entry(config["models"][model]),
        "model_sha256": model_fingerprint(model_dir), "adapter_sha256": adapter_sha,
        "eval": {k: ev.get(k) for k in EVAL_RESULT_KEYS}, "prompt": config["prompt"],
        "pause": config["pause"] if PAUSED[variant] else None,
        "split": {"seed": config["seed"], **{k: config["shards"][k] for k in ("holdout_haystack", "haystack_fraction")}},
        "haystack": {str(Path(p).parent.name) + "/" + Path(p).stem: sha256_file(p) for p in haystack_files},
        "dtype": dtype, "device_type": device_type, "versions": versions(),
        "code_generate": code_identity()["generate"], "kernels": kernels(device_type, dtype),
    }
    if ev.get("judge") and ev["judge"].get("kind") == "local":
        ident["judge_model"] = _entry(config["models"].get(ev["judge"]["model"]))
    return ident


def kernels(device_type: str, dtype: str | None = None) -> dict:
    """The kernel family a cell's numbers come from: on a CPU torch dispatches GEMMs and attention by the
    instruction set (AVX2 / AVX512 / AMX paths round differently) and splits them by thread count, so both are
    part of a cell's identity; in fp32 on
    a CPU also the linear kernels (MKL or oneDNN, per input size) the machine measured fastest
    (core.models.fp32_linear_kernels), which the engine then uses."""
    import torch

    out = {"attention": "pausetune split flash (chunks on a cache), sdpa elsewhere"}
    if device_type == "cpu":
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        # A GEMM's reduction is split by thread: 1 and 2 threads give different bf16 log-probs for the same cell
        # (SmolLM2 pause-tuned, 2K, depth 50: -3.559 vs -3.428), so a cell made with other threads is another cell.
        out["threads"] = torch.get_num_threads()
        from ..core.models import cpu_native_bf16, fp32_linear_kernels, linear_route_record

        out["native_bf16"] = cpu_native_bf16()
        if dtype == "float32":
            out["linear_fp32"] = linear_route_record(fp32_linear_kernels())
    elif device_type == "cuda":
        out["cuda"] = torch.version.cuda
        out["device"] = torch.cuda.get_device_name()
    return out


def cell_id(block_ident: dict, task_spec: dict, task: str, seed: int, length: int, depth: float) -> str:
    from ..core.design import format_depth

    data = {"block": block_ident, "task": task, "task_spec": task_spec, "seed": seed, "length": int(length),
            "depth": format_depth(depth)}
    return hashlib.sha256(dumps_json(data).encode()).hexdigest()


def _depth_value(d: float):
    return int(d) if float(d).is_integer() else float(d)


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


def timing_path(cell: Path, results: str) -> Path:
    return Path(layout.timing(str(cell), results))


def run_block(config: dict, *, model: str, variant: str, cells: list[tuple[str, int, float]], seed: int,
              model_dir, haystack: list[str], checkpoint=None, shard_manifest=None,
              judge_model_dir=None, results: str = layout.RESULTS, cells_cache: str | None = None,
              device: str | None = None, force: bool = False, log=print) -> dict:
    """Evaluate one block, cells (task, length, depth) of one haystack seed; returns {computed, cached, skipped}."""
    import torch

    from ..core.engine import Engine, Request, eos_ids_of
    from ..core.design import PAUSED, format_depth
    from ..core.grid import cell_path
    from ..core.checks import check_block, check_budgets
    from ..core.haystack import PromptBuilder, build_stream, essay_order, haystack_ids, load_essays, stream_meta
    from ..core.models import default_device, model_entry, torch_dtype
    from ..core.needles import build_task
    from ..core.scoring import make_judge, score_cell

    ev = config["eval"]
    tasks = list(dict.fromkeys(t for t, _, _ in cells))
    check_block(config, model, variant, tasks, sorted({n for _, n, _ in cells}), sorted({d for _, _, d in cells}))
    evc = EvalConfig.of(config)
    device = device or evc.device or default_device()
    dname = evc.dtype if evc.dtype != "auto" else model_entry(config, model)["dtype"]
    dtype_resolved = str(torch_dtype(dname, device)).replace("torch.", "")
    if evc.threads:
        torch.set_num_threads(evc.threads)
    cache_root = Path(cells_cache or Path(results) / Path(layout.CELLS_CACHE).name)
    # A killed job's temp files here (the cache, this block's cell and timing folders); blocks run in parallel into
    # the same folders, so only those whose writer is gone.
    block_dirs = {Path(cell_path(model, variant, t, seed, n, d, results)).parent for t, n, d in cells}
    clean_dead_tmp(cache_root, *block_dirs, *(timing_path(c, results) for c in block_dirs))

    adapter_sha = None
    from ..core.design import CHECKPOINT

    if variant in CHECKPOINT and checkpoint:
        from ..core.checkpoints import checkpoint_adapter_hash

        adapter_sha = checkpoint_adapter_hash(checkpoint)
    ident = block_identity(config, model, variant, model_dir, haystack, adapter_sha, dtype_resolved,
                           torch.device(device).type)

    # 1. What is already done. A cell (in place or cached) made by the same generation code counts; if the scoring
    # code changed since, its stored answer is rescored (no generation), and it is written again.
    todo, counts = [], {"computed": 0, "cached": 0, "skipped": 0, "rescored": 0}
    score_code = code_identity()["score"]
    restale = []  # (cell data, out path) whose answers need the current scoring
    for t, n, d in cells:
        cid = cell_id(ident, config["tasks"][t], t, seed, n, d)
        out = Path(cell_path(model, variant, t, seed, n, d, results))
        cached = cache_root / f"{cid}.json"
        if not force and out.exists():
            try:
                data = json.loads(out.read_text())
                if data.get("cell_id") == cid:
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
                    data.pop("timing", None)  # cached by a version that kept timings in the cell
                    if data.get("code", {}).get("score") == score_code:
                        write_json(out, data)
                        counts["cached"] += 1
                    else:
                        restale.append((data, out))
                    continue
            except PausetuneError:
                pass
        todo.append((t, n, d, cid, out))
    if restale or todo:
        from ..core.checks import check_judge

        check_judge(ev.get("judge"))  # before any model loads
    if restale:
        call = make_judge(config, judge_model_dir, dname, device)
        for data, out in restale:
            new = score_cell(data, ev.get("judge"), call)
            write_json(cache_root / f"{new['cell_id']}.json", new)  # the cache first: a computed cell is never lost
            write_json(out, new)
            counts["rescored"] += 1
    rescored = f", {counts['rescored']} rescored" if counts["rescored"] else ""
    if not todo:
        log(f"eval {model}/{variant} seed{seed}: nothing to do ({counts['skipped']} done, {counts['cached']} "
            f"from the cell cache{rescored})")
        return counts

    # 2. Sizes first (tokenizer only: one-line errors before any weights load), then model and haystack.
    from ..core.models import load_tokenizer

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
    by_id = dict(essays)
    order = essay_order(hay_ids, seed)
    builder = PromptBuilder(tok, config, model, pause_ids)
    insts = {}
    bank = None
    if any(config["tasks"][t].get("bank") for t in tasks):
        from ..core.banks import check_banks

        bank = check_banks(config)[1]
    for t, n, d, cid, out in todo:
        insts[cid] = build_task(t, config["tasks"][t], config["seed"], seed, n, d, bank=bank)
    need = max(n for _, n, _, _, _ in todo)
    stream = build_stream(tok, by_id, order, need, pause_ids)
    method = Path(haystack[0]).stem
    hmeta = stream_meta(haystack, order, method, PAUSED[variant], config["pause"])
    if pause_ids:
        hmeta["pause_ids"] = list(pause_ids)

    prompts, requests = {}, []
    for t, n, d, cid, out in todo:
        inst = insts[cid]
        cp = builder.build(stream, n, d, inst.needles, inst.question, task=t)
        prompts[cid] = cp
        m = cell_measure(tok, inst, cp, pause_ids, evc.measure, builder.format == "plain")
        requests.append(Request(cid, cp.ids, cp.shareable, m))
    eos = eos_ids_of(net, tok)
    engine = Engine(net, eos, evc.max_new_tokens, batch_size=evc.batch_size, reuse_prefix=evc.reuse_prefix,
                    prefill_chunk=evc.prefill_chunk,
                    linear=ident["kernels"].get("linear_fp32"))
    judge_call = make_judge(config, judge_model_dir, dname, device)
    vers = versions()
    info = {cid: (t, n, d, out) for t, n, d, cid, out in todo}
    done_lengths: set = set()
    t_block = time.perf_counter()
    try:
        for res in engine.run(requests):
            t, n, d, out = info[res.key]
            inst, cp = insts[res.key], prompts[res.key]
            answer = tok.decode(res.new_ids, skip_special_tokens=True).strip()
            cell = {
                "cell_id": res.key, "model": model, "variant": variant, "task": t, "kind": inst.kind, "seed": seed,
                "length": int(n), "depth": _depth_value(d),
                "context_tokens": len(cp.ids), "haystack_tokens": cp.haystack_tokens,
                "needle_tokens": cp.needle_tokens, "needle_positions": cp.needle_positions,
                "needle_depths": cp.needle_depths, "depth_actual": cp.depth_actual,
                "needles": inst.needles, "question": inst.question,
                "expected": [[f] for f in inst.facts]
                if inst.kind not in ("single", "multi") or config["tasks"][t].get("bank")
                else config["tasks"][t]["expected"],
                "facts": inst.facts, "reference": inst.reference, "answer": answer, "answer_tokens": len(res.new_ids),
                "prompt_sha256": cp.sha256(), "prompt_format": builder.format,
                "haystack": hmeta, "adapter_sha256": adapter_sha, "model_sha256": ident["model_sha256"],
                "dtype": dtype_resolved, "device_type": torch.device(device).type, "versions": vers,
                "eval": {k: ev.get(k) for k in EVAL_RESULT_KEYS if k != "judge"},
                "code": {"generate": ident["code_generate"]}, "kernels": ident["kernels"],
            }
            if inst.keys:
                cell["ruler"] = inst.keys
            cell.update(measure_fields(inst, res.measures))
            if judge_call is not None:  # the answer first, unscored: a judge failure must not lose it (the rerun
                write_json(cache_root / f"{res.key}.json", cell)  # finds it in the cache and only scores it)
            cell = score_cell(cell, ev.get("judge"), judge_call)
            write_json(cache_root / f"{res.key}.json", cell)  # the cache first: a computed answer is never lost
            write_json(out, cell)
            write_json(timing_path(out, results), {"cell_id": res.key, "device": str(device), **{
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
                   help="paused parquet(s) (default: data/paused/{source}/{paragraphs.method}.parquet of "
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
    haystack = args.haystack or [layout.PAUSED.format(source=s, method=method) for s in ev["haystack_sources"]]
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
