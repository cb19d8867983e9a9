"""A cell's identity and record: what determines its numbers (hashed into `cell_id`), the fields a cell file holds,
and the finished-cell cache (`results/.cells/{cell_id}.json`) that a failed or recut block's rerun reads.

`cell_id` is the sha256 of everything that determines the cell: coordinates, task, prompt, eval settings that change
answers (EVAL_RESULT_KEYS, the prefill grain and decode width among them: core.engine), pause and split settings,
the model's prepared.json/config.json, the adapter's sha256, the haystack files' sha256, dtype, device type, kernels
and thread count, package versions and the generation code's fingerprint. What a run measures (seconds, reused
tokens, batch) goes to `results/timing/...`, never into the cell, so a cell is the same bytes on every run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import layout
from .io import PausetuneError, dumps_json, read_json, sha256_file, write_json

SCORING = "pausetune.core.scoring"
STAGE = "pausetune.stages.eval"  # the generation code: that stage's import closure


def code_identity() -> dict:
    """The code a cell comes from: generation (this stage's import closure without scoring) and scoring apart, so
    a scoring edit rescores cached answers instead of regenerating them, and any other edit misses the cache."""
    from .fingerprint import fingerprint
    from .scoring import scoring_code

    return {"generate": fingerprint(STAGE, exclude=(SCORING,)), "score": scoring_code()}

# eval keys that change a cell's answer: part of its identity and of the Snakemake rule's params. prefill_chunk and
# batch_size are among them: they fix the chunk and decode-batch shapes whose GEMM rounding a cell's numbers carry
# (core.engine). reuse_prefix and block are not. Threads and the device type change the numbers too: they enter
# the identity through `kernels`, as the job finds them, not as config keys.
EVAL_RESULT_KEYS = ("buffer", "sentence_end", "needle_prefix", "max_new_tokens", "dtype", "judge", "haystack_sources",
                    "measure", "prefill_chunk", "batch_size")


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
    from .models import resolve_path

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
    from .design import PAUSED

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
    part of a cell's identity; in fp32 on a CPU also the linear kernels (MKL or oneDNN, per input size) the
    machine measured fastest (core.models.fp32_linear_kernels), which the engine then uses."""
    import torch

    out = {"attention": "pausetune split flash (chunks on a cache), sdpa elsewhere"}
    if device_type == "cpu":
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        # A GEMM's reduction is split by thread: 1 and 2 threads give different bf16 log-probs for the same cell
        # (SmolLM2 pause-tuned, 2K, depth 50: -3.559 vs -3.428), so a cell made with other threads is another cell.
        out["threads"] = torch.get_num_threads()
        from .models import cpu_native_bf16, fp32_linear_kernels, linear_route_record

        out["native_bf16"] = cpu_native_bf16()
        if dtype == "float32":
            out["linear_fp32"] = linear_route_record(fp32_linear_kernels())
    elif device_type == "cuda":
        out["cuda"] = torch.version.cuda
        out["device"] = torch.cuda.get_device_name()
    return out


def cell_id(block_ident: dict, task_spec: dict, task: str, seed: int, length: int, depth: float) -> str:
    from .design import format_depth

    data = {"block": block_ident, "task": task, "task_spec": task_spec, "seed": seed, "length": int(length),
            "depth": format_depth(depth)}
    return hashlib.sha256(dumps_json(data).encode()).hexdigest()


def _depth_value(d: float):
    return int(d) if float(d).is_integer() else float(d)


def timing_path(cell: Path, results: str) -> Path:
    return Path(layout.timing(str(cell), results))


def scan(cells: list, ident: dict, config: dict, *, model: str, variant: str, seed: int, results: str,
         cache_root: Path, force: bool = False) -> tuple[list, list, dict]:
    """Which cells of a block are done. A cell in place or in the cache made by the same generation code counts; one
    whose scoring code changed since keeps its answer and is rescored. Returns (todo [(task, length, depth, cell_id,
    path)], restale [(cell, path)], counts {computed, cached, skipped, rescored}); cached cells are put in place."""
    from .grid import cell_path

    todo, restale = [], []
    counts = {"computed": 0, "cached": 0, "skipped": 0, "rescored": 0}
    score_code = code_identity()["score"]
    for t, n, d in cells:
        cid = cell_id(ident, config["tasks"][t], t, seed, n, d)
        out = Path(cell_path(model, variant, t, seed, n, d, results))
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


def cell_prompts(builder, stream: list[int], config: dict, seed: int, cells: list, bank=None) -> list:
    """(task instance, prompt) of each (task, length, depth) cell: the one way eval and the benches build them."""
    from .needles import build_task

    out = []
    for t, n, d in cells:
        inst = build_task(t, config["tasks"][t], config["seed"], seed, n, d, bank=bank)
        out.append((inst, builder.build(stream, n, d, inst.needles, inst.question, task=t)))
    return out


def cell_record(*, key: str, answer: str, new_ids: list, measures: dict | None, inst, cp, task: str, seed: int,
                length: int, depth: float, model: str, variant: str, config: dict, prompt_format: str,
                haystack: dict, adapter_sha: str | None, ident: dict, dtype: str, device_type: str,
                versions: dict) -> dict:
    """The cell file's fields (unscored): coordinates, prompt facts, answer, provenance, measures."""
    spec = config["tasks"][task]
    cell = {
        "cell_id": key, "model": model, "variant": variant, "task": task, "kind": inst.kind, "seed": seed,
        "length": int(length), "depth": _depth_value(depth),
        "context_tokens": len(cp.ids), "haystack_tokens": cp.haystack_tokens,
        "needle_tokens": cp.needle_tokens, "needle_positions": cp.needle_positions,
        "needle_depths": cp.needle_depths, "depth_actual": cp.depth_actual,
        "needles": inst.needles, "question": inst.question,
        "expected": [[f] for f in inst.facts] if inst.kind not in ("single", "multi") or spec.get("bank")
        else spec["expected"],
        "facts": inst.facts, "reference": inst.reference, "answer": answer, "answer_tokens": len(new_ids),
        "prompt_sha256": cp.sha256(), "prompt_format": prompt_format,
        "haystack": haystack, "adapter_sha256": adapter_sha, "model_sha256": ident["model_sha256"],
        "dtype": dtype, "device_type": device_type, "versions": versions,
        "eval": {k: config["eval"].get(k) for k in EVAL_RESULT_KEYS if k != "judge"},
        "code": {"generate": ident["code_generate"]}, "kernels": ident["kernels"],
    }
    if inst.keys:
        cell["ruler"] = inst.keys
    cell.update(measure_fields(inst, measures))
    return cell


def store(cell: dict, out: Path, cache_root: Path, results: str, timing: dict | None = None) -> None:
    """The cache first (a computed answer is never lost), then the cell in place, then its timing beside it."""
    write_json(layout.cached_cell(cache_root, cell["cell_id"]), cell)
    write_json(out, cell)
    if timing is not None:
        write_json(timing_path(out, results), {"cell_id": cell["cell_id"], **timing})
