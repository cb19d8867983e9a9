"""Decode cost per token per cell: the eval engine's greedy loop against `model.generate` (greedy), same run.

Each cell is a prompt of `--length` tokens (a shared random-token stream with a needle chunk at a different depth,
so cells share prefixes as eval blocks do); both sides generate exactly `--new-tokens` tokens (EOS ignored, so the
token counts match). Decode time = everything after the first answer token:
- engine: `Result.timing['decode_s']` per batch group (the batch-buffer copy included), over (new tokens - 1) x cells;
- generate: `generate(max_new_tokens=T)` minus `generate(max_new_tokens=1)` on the same prompt, over T - 1.
Runs alternate engine / generate `--repeat` times; medians are printed, with the ratio. Target (issue #18):
<= 30 ms per token per cell at 2K on 2 cores.

    python bench/decode.py data/models/smollm2 --threads 2 --dtype bfloat16 --batch-sizes 1,4,8
    python bench/decode.py data/models/smollm2 --threads 2 --dtype float32 --profile    # + where a step's time goes

`--profile` runs one engine decode per batch size under torch.profiler and splits a decode step's wall time into
linear layers (GEMV/GEMM), attention kernels, every other op, and the rest (Python and dispatch between ops).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_prompts(length: int, cells: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    stream = [rng.randrange(1000, 20000) for _ in range(length)]
    needle = [rng.randrange(1000, 20000) for _ in range(16)]
    out = []
    for i in range(cells):
        p = int((length - len(needle)) * i / max(1, cells - 1))
        out.append(stream[:p] + needle + stream[p:length - len(needle)])
    return out


def profile_decode(model, prompts: list[list[int]], bs: int, new_tokens: int, linear: str) -> dict:
    """One batched engine decode of `bs` cells (prefill outside the profile), its wall time split by op family
    (ms per decode step): linear layers, attention kernels, every other op, the rest (Python, dispatch)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pausetune.core.evaluation.engine import ATTN_NAME, Engine, attention_impl
    from pausetune.core.evaluation.kvcache import BufferCache, num_layers

    eng = Engine(model, [], new_tokens, batch_size=bs, linear=linear, prefill_chunk=max(map(len, prompts)))
    rows = prompts[:bs]
    lengths = [len(r) for r in rows]
    with torch.inference_mode(), attention_impl(model, ATTN_NAME), eng.linear_kernels():
        firsts, caches = [], []
        for ids in rows:
            c = BufferCache(num_layers(model), len(ids) + new_tokens + 1)
            firsts.append(eng._forward(ids, c, 0).argmax(-1))
            caches.append(c)
        if bs == 1:
            cache, offsets = caches[0], None
        else:
            cache, n_max = eng._batch_cache(caches[0], lengths)
            for row, c in enumerate(caches):
                for src, dst in zip(c.layers, cache.layers):
                    dst._k[row, :, n_max - lengths[row]:n_max] = src.keys[0]
                    dst._v[row, :, n_max - lengths[row]:n_max] = src.values[0]
            offsets = [n_max - n for n in lengths]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            eng._decode(torch.cat(firsts), cache, lengths, offsets)
            wall = time.perf_counter() - t0
    steps = new_tokens - 1
    fam = {"linear": 0.0, "attention": 0.0, "other_ops": 0.0}
    for ev in prof.key_averages():
        t = ev.self_cpu_time_total / 1e6
        if ev.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_linear", "aten::_mkl_linear",
                      "mkldnn::_linear_pointwise", "aten::mv"):
            fam["linear"] += t
        elif "attention" in ev.key or "flash" in ev.key:
            fam["attention"] += t
        else:
            fam["other_ops"] += t
    fam["python_dispatch"] = max(0.0, wall - sum(fam.values()))
    return {k: round(1e3 * v / steps, 2) for k, v in fam.items()} | {"wall_ms_per_step": round(1e3 * wall / steps, 2),
                                                                     "batch": bs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", help="a prepared model folder (data/models/{model})")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-sizes", default="1,4")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--linear", default="auto", help="fp32 linear kernels: auto | mkl | onednn (engine side)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--generate-cells", type=int, default=2, help="cells timed with model.generate per repeat")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT / "workflow"))
    from pausetune.core.evaluation.engine import Engine, Request
    from pausetune.core.kernels import set_threads
    from pausetune.core.models import load_model

    set_threads(args.threads)
    model = load_model(args.model_dir, args.dtype, "cpu")
    prompts = make_prompts(args.length, args.cells)
    T = args.new_tokens
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    def engine_once(bs: int) -> tuple[float, int]:
        eng = Engine(model, [], T, batch_size=bs, linear=args.linear, prefill_chunk=args.length)
        dec, toks = 0.0, 0
        reqs = [Request(i, ids, len(ids) // 2) for i, ids in enumerate(prompts)]
        for r in eng.run(reqs):
            dec += r.timing["decode_s"] / r.timing["batch"]  # each member of a group carries the group's time
            toks += len(r.new_ids) - 1
        return dec, toks

    def generate_once(ids: list[int]) -> float:
        from transformers import GenerationConfig

        x = torch.tensor([ids])
        times = []
        for n in (1, T):
            gc = GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                  pad_token_id=0)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=gc)
            times.append(time.perf_counter() - t0)
            assert out.shape[1] == len(ids) + n, out.shape
        return (times[1] - times[0]) / (T - 1)

    res = {"model": str(args.model_dir), "dtype": args.dtype, "threads": torch.get_num_threads(),
           "length": args.length, "cells": args.cells, "new_tokens": T, "engine": {}, "generate_ms": None}
    print(f"decode after {args.length} tokens, {args.dtype}, {res['threads']} threads, {T} new tokens per cell, "
          f"{args.cells} cells; medians of {args.repeat} alternating runs", flush=True)
    eng_ms = {bs: [] for bs in sizes}
    gen_ms = []
    for rep in range(args.repeat):
        for bs in sizes:
            dec, toks = engine_once(bs)
            eng_ms[bs].append(1e3 * dec / toks)
        for ids in prompts[:args.generate_cells]:
            gen_ms.append(1e3 * generate_once(ids))
    g = statistics.median(gen_ms)
    res["generate_ms"] = round(g, 3)
    res["generate_runs_ms"] = [round(x, 3) for x in gen_ms]
    print(f"  model.generate (batch 1): {g:7.1f} ms per token per cell", flush=True)
    for bs in sizes:
        m = statistics.median(eng_ms[bs])
        res["engine"][str(bs)] = {"ms": round(m, 3), "ratio_vs_generate": round(g / m, 3),
                                  "runs_ms": [round(x, 3) for x in eng_ms[bs]]}
        print(f"  engine batch {bs}:          {m:7.1f} ms per token per cell  ({g / m:.2f}x generate)", flush=True)
    if args.profile:
        res["profile"] = {}
        for bs in sizes:
            prof = profile_decode(model, prompts, bs, T, args.linear)
            res["profile"][str(bs)] = prof
            print(f"  profile, engine batch {bs}, ms per decode step: {prof}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
