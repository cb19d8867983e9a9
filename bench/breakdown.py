"""Where the time goes: a LoRA training step, or an eval block, under torch.profiler, as a table of categories.

    python bench/breakdown.py train --model-dir data/models/smollm2 --batch 2 --seq-len 512 --autocast bfloat16
    python bench/breakdown.py train --model-dir data/models/smollm2 --lengths 256,512 --autocast bfloat16 --old
    python bench/breakdown.py attention --lengths 448,1024,2048
    python bench/breakdown.py eval --model-dir data/models/smollm2 --haystack data/paragraphs/paul_graham/heuristic.parquet \\
        --lengths 2000,4000,8000 --depths 0,50,100 --dtype bfloat16

Each op's *self* time (its children excluded) is put in one category, by name, phase and input shapes: GEMMs of the
frozen base, LoRA's rank-r GEMMs, the LM head, attention (forward / backward), copies and casts, elementwise math
and norms, the optimizer (AdamW and clipping); what is left of the wall time is Python and dispatch. The profiler
itself slows every op a little, so the shares are read against the profiled wall; the unprofiled time per step (or
per block) is printed beside it.

`train --objective lm` takes the causal-LM loss over every token (bench/train_step.py's step) instead of the
retrieval objective's answer span. `train --lengths a,b,...` gives the rows of a micro-batch those lengths (right-padded to the longest, loss on the
last 8 tokens of each row, as the retrieval objective's answer span): the padding's cost. `--old` runs the path
before issue #25 (frozen weights cast at every forward under autocast, peft's pause row copying the embedding,
padded micro-batches); the default is today's (core.training.lora.hold_frozen_weights and sparse_token_rows,
core.training.objectives.Retrieval's unpadded rows).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))

GEMMS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise", "aten::_addmm_activation"}
COPIES = {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous", "aten::index_put_",
          "aten::slice_scatter", "aten::cat", "aten::fill_", "aten::zero_", "aten::zeros", "aten::empty"}
PHASES = ("forward", "backward", "optimizer", "data", "engine")


def category(ev, phase: str, rank: int, vocab: int) -> str:
    name = ev.name
    shapes = [tuple(s) for s in (ev.input_shapes or []) if s]
    dims = {d for s in shapes for d in s}
    if phase == "optimizer":
        return "optimizer (AdamW, clip, zero_grad)"
    if phase == "data":
        return "data (collate, to device)"
    if "scaled_dot_product" in name or "flash_attention" in name or name in ("aten::_softmax", "aten::softmax"):
        return f"attention {phase}" if phase in ("forward", "backward") else "attention"
    if name in GEMMS:
        if vocab in dims:
            return "LM head GEMM"
        if rank and rank in dims:
            return f"LoRA GEMM (rank {rank})"
        return "linear GEMM (frozen base)" if phase in ("forward", "backward") else "linear GEMM"
    if name in COPIES:
        return "copies and casts"
    if name.startswith("aten::"):
        return "elementwise, norms, other aten"
    return "other"


def breakdown(prof, rank: int, vocab: int) -> dict:
    """Self time (s) per category; an op's phase is its nearest enclosing record_function named in PHASES."""
    out = defaultdict(float)
    for ev in prof.events():
        if ev.name in PHASES or ev.name.startswith("ProfilerStep") or ev.name.startswith("Optimizer."):
            continue
        phase, p = "", ev.cpu_parent
        while p is not None:
            if p.name in PHASES:
                phase = p.name
                break
            p = p.cpu_parent
        out[category(ev, phase, rank, vocab)] += ev.self_cpu_time_total / 1e6
    return dict(out)


def print_table(title: str, cats: dict, wall: float, per: str, n: int, plain_wall: float) -> dict:
    ops = sum(cats.values())
    rows = sorted(cats.items(), key=lambda kv: -kv[1]) + [("Python and dispatch (wall - ops)", max(wall - ops, 0.0))]
    print(f"\n{title}: profiled wall {wall / n:.3f} s per {per} (unprofiled {plain_wall / n:.3f} s), {n} {per}s")
    print(f"  {'category':40s} {'s per ' + per:>12s} {'share':>7s}")
    for k, v in rows:
        print(f"  {k:40s} {v / n:12.4f} {100 * v / wall:6.1f}%")
    return {k: round(v / n, 5) for k, v in rows}


# ------------------------------------------------------------------------------------------------------- train
def train_main(args) -> int:
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from pausetune.core.kernels import autocast_dtype, set_threads
    from pausetune.core.training import objectives as obj
    from pausetune.core.training.lora import (fused_lora, hold_frozen_weights, make_optimizer, prepare_peft,
                                              sparse_token_rows)
    from train_step import load_base, train_cfg

    set_threads(args.threads)
    args.random_shape, args.quantization, args.target_modules = None, "none", None
    args.gradient_checkpointing, args.grad_accum = False, 1
    args.warmup = 1
    device = "cpu"
    cfg = train_cfg(args)
    base = load_base(args, device)
    vocab = base.get_input_embeddings().weight.shape[0]
    model, info = prepare_peft(base, cfg, [vocab - 1], "special")
    amp_dtype = autocast_dtype(args.autocast, info["dtype"], device)
    if not args.old:
        if amp_dtype:
            hold_frozen_weights(model, amp_dtype)
        sparse_token_rows(model)
        fused_lora(model)
    opt, sched = make_optimizer(model, cfg)
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else [args.seq_len] * args.batch
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, vocab - 1, (n,), generator=g).tolist(), "answer_start": n - 8,
             "answer_end": n} for n in lengths]
    objective = obj.LM if args.objective == "lm" else obj.PaddedRetrieval if args.old else obj.Retrieval
    if args.objective == "lm" and len(set(lengths)) > 1:
        raise SystemExit("--objective lm: rows of one length (packed essay rows)")
    rank = int(cfg["lora"]["r"])

    def amp():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cpu", dtype=getattr(torch, amp_dtype))

    def step(prof_on: bool):
        rf = record_function if prof_on else (lambda name: contextlib.nullcontext())
        model.train()
        with rf("data"):
            if objective is obj.LM:
                micro = [torch.tensor([r["input_ids"] for r in rows], device=device)]
            else:
                micro = [tuple(t.to(device) for t in obj.collate(rows, 0, "answer"))]
        divisor = objective.divisor(micro)
        with amp():
            for batch in micro:
                for piece in objective.pieces(batch):
                    with rf("forward"):
                        loss = objective.loss(model, piece)
                    with rf("backward"):
                        (loss / divisor).backward()
        with rf("optimizer"):
            params = [p for gr in opt.param_groups for p in gr["params"]]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)

    step(False)  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(False)
    plain = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(True)
        wall = time.perf_counter() - t0
    what = "old path (frozen weights cast per forward, peft's dense pause row, padded rows)" if args.old else "today's path"
    print(f"LoRA r{rank} step, {args.objective} objective, rows of {lengths} tokens, autocast {amp_dtype}, {torch.get_num_threads()} threads, "
          f"{what}; {torch.backends.cpu.get_cpu_capability()}")
    print_table("train step", breakdown(prof, rank, vocab), wall, "step", args.steps, plain)
    if args.top:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


# -------------------------------------------------------------------------------------------------------- eval
def eval_main(args) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from eval_grid import grid_prompts
    from pausetune.core.evaluation.cells import cell_measure
    from pausetune.core.evaluation.engine import Engine, Request, eos_ids_of
    from pausetune.core.kernels import set_threads
    from pausetune.core.models import load_model, load_tokenizer

    set_threads(args.threads)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.depths = [float(x) for x in args.depths.split(",")]
    args.task, args.seed, args.buffer, args.max_new_tokens = "single", 0, 200, 32
    tok = load_tokenizer(args.model_dir)
    model = load_model(args.model_dir, args.dtype, "cpu")
    cells = grid_prompts(args, tok)
    eos = eos_ids_of(model, tok)
    vocab = model.get_input_embeddings().weight.shape[0]
    what = ["logprob", "attention"] if args.measure else []

    def block():
        eng = Engine(model, eos, 32, batch_size=4, prefill_chunk=512, linear="auto")
        reqs = [Request(key, cp.ids, cp.shareable,
                        cell_measure(tok, task, cp, None, what, args.prompt_format == "plain"))
                for key, cp, task in cells]
        res = list(eng.run(reqs))
        return sum(r.timing["prefill_s"] for r in res) + max(r.timing.get("trunk_prefill_s", 0.0) for r in res)

    t0 = time.perf_counter()
    prefill_s = block()
    plain = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        with record_function("engine"):
            block()
        wall = time.perf_counter() - t0
    print(f"eval block: {len(cells)} cells, lengths {args.lengths} x depths {args.depths}, {args.dtype}, "
          f"{torch.get_num_threads()} threads, measures {what or 'none'}; {torch.backends.cpu.get_cpu_capability()}; "
          f"unprofiled: {plain:.2f} s, of which prefill {prefill_s:.2f} s")
    print_table("eval block", breakdown(prof, 0, vocab), wall, "block", 1, plain)
    return 0


# --------------------------------------------------------------------------------------------------- attention
def attn_main(args) -> int:
    """SDPA forward and backward of one SmolLM2 layer's causal attention (9 query heads, 3 KV heads, 64 wide), bf16,
    on the flash and the math backends: why attention backward weighs so much in a training step."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for n in [int(x) for x in args.lengths.split(",")]:
        q = torch.randn(1, 9, n, 64, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, 3, n, 64, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, 3, n, 64, dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn(1, 9, n, 64, dtype=torch.bfloat16)
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
            fwd, bwd = [], []
            for _ in range(args.repeat + 1):
                with sdpa_kernel(backend):
                    t0 = time.perf_counter()
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    t1 = time.perf_counter()
                    out.backward(g)
                    fwd.append(t1 - t0)
                    bwd.append(time.perf_counter() - t1)
            f, b = min(fwd[1:]), min(bwd[1:])
            print(f"T={n:5d} {name:5s}: forward {1e3 * f:8.2f} ms  backward {1e3 * b:8.2f} ms  ({b / f:.1f}x)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model-dir", required=True)
    t.add_argument("--batch", type=int, default=2)
    t.add_argument("--seq-len", type=int, default=512)
    t.add_argument("--lengths", default=None, help="row lengths of the micro-batch (default: batch x seq-len)")
    t.add_argument("--dtype", default="float32")
    t.add_argument("--autocast", default="bfloat16", choices=["auto", "none", "bfloat16"])
    t.add_argument("--steps", type=int, default=3)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--old", action="store_true", help="the path before issue #25")
    t.add_argument("--top", type=int, default=0, help="also print the N ops of most self time, by input shape")
    t.add_argument("--objective", default="retrieval", choices=["retrieval", "lm"],
                   help="retrieval: loss on the last 8 tokens of each row (the LM head there only); lm: every token")
    e = sub.add_parser("eval")
    e.add_argument("--model-dir", required=True)
    e.add_argument("--haystack", nargs="*", required=True)
    e.add_argument("--lengths", default="2000,4000,8000")
    e.add_argument("--depths", default="0,50,100")
    e.add_argument("--dtype", default="bfloat16")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--measure", action="store_true", help="with eval.measure logprob + attention")
    a = sub.add_parser("attention")
    a.add_argument("--lengths", default="448,1024,2048")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    if args.what == "attention":
        return attn_main(args)
    if args.what == "train":
        args.model_dir = str(args.model_dir)
        return train_main(args)
    return eval_main(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
