"""What a long-context study costs on this machine (issue #27): prefill at 4K-32K tokens, a cached chunk against a
plain prefill, decode per token, and a LoRA step at 1K-8K tokens, each with its achieved GFLOP/s and its share of
the bf16 GEMM peak measured in the same run; the stock transformers forward beside the engine where it finishes.

    python bench/long_context.py --model-dir data/models/gemma3 --lengths 4096,8192,16384,32768 \\
        --train-lengths 1024,2048,4096,8192 --stock-max 8192 --json bench/long_context.json

FLOPs count what the model must compute: 2 per linear weight per token (the LM head once, for the last position),
and attention QK^T + PV over the keys each query sees: all earlier ones in a full layer, the last `window` in a
sliding one (Gemma-3: 5 of every 6 layers slide over 512 tokens). The prompts are random ordinary tokens: timing
only (the FLOPs do not depend on the values).
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
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "bench"))


def attended(start: int, end: int, window: int | None) -> int:
    """Sum over query positions start..end-1 of the keys each sees (itself included)."""
    if window is None:
        return (start + 1 + end) * (end - start) // 2
    full_until = min(end, max(start, window))  # positions below the window see t + 1 keys
    low = (start + 1 + full_until) * (full_until - start) // 2 if full_until > start else 0
    return low + window * (end - max(start, full_until))


def forward_flops(cfg, windows, start: int, end: int, head_rows: int = 1) -> float:
    """Forward FLOPs of positions start..end-1 on a cache of `start` tokens (module doc)."""
    from peak import decoder_dims

    d = decoder_dims(cfg)
    n = end - start
    attn = sum(4 * d["heads"] * d["head_dim"] * attended(start, end, w) for w in windows)
    return 2 * d["linear_params"] * n + attn + 2 * d["hidden"] * d["vocab"] * head_rows


def random_ids(tok, n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(1000, min(len(tok), 200_000)) if i not in special]
    return [tok.bos_token_id or vocab[0]] + [rng.choice(vocab) for _ in range(n - 1)]


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    return statistics.median(_once(fn) for _ in range(repeat))


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def prefill_rows(model, tok, args, peak: float) -> list[dict]:
    import torch

    from pausetune.core.evaluation.engine import Engine, Request, attention_impl, prefill_grain
    from pausetune.core.evaluation.kvcache import BufferCache, layer_windows, num_layers

    cfg, windows = model.config, layer_windows(model)
    rows = []
    for n in args.lengths:
        ids = random_ids(tok, n)
        eng = Engine(model, [], max_new_tokens=1, prefill_chunk=args.grain)
        plain = timed(lambda: list(eng.run([Request(0, ids, 0)])), args.repeat)
        flops = forward_flops(cfg, windows, 0, n)
        half = n // 2 // args.grain * args.grain
        cache = BufferCache(num_layers(model), n + 8)

        def cached():
            cache.truncate(half)
            eng._forward(ids[half:], cache, half)

        with torch.inference_mode(), eng.linear_kernels(), attention_impl(model, eng.attn), prefill_grain(args.grain):
            eng._forward(ids[:half], cache, 0)
            chunk = timed(cached, args.repeat)
        cflops = forward_flops(cfg, windows, half, n)
        row = {"tokens": n, "engine_s": round(plain, 3), "engine_tok_s": round(n / plain, 1),
               "gflop": round(flops / 1e9, 1), "gflop_s": round(flops / plain / 1e9, 1),
               "share_of_peak": round(flops / plain / peak, 3),
               "cached_half_s": round(chunk, 3), "cached_half_tok_s": round((n - half) / chunk, 1),
               "cached_half_gflop_s": round(cflops / chunk / 1e9, 1)}
        if n <= args.stock_max:
            x = torch.tensor([ids])

            def stock():
                with torch.inference_mode():
                    model(input_ids=x, use_cache=False, logits_to_keep=1)

            s = timed(stock, 1)
            row.update(stock_s=round(s, 3), engine_vs_stock=round(s / plain, 2))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def decode_rows(model, tok, args) -> list[dict]:
    from pausetune.core.evaluation.engine import Engine, Request

    rows = []
    for n in args.decode_lengths:
        ids = random_ids(tok, n, seed=1)
        for bs in (1, 4):
            eng = Engine(model, [], max_new_tokens=args.new_tokens, prefill_chunk=args.grain, batch_size=bs)
            res = list(eng.run([Request(i, ids[:n - i], n - 8) for i in range(bs)]))
            dec = res[0].timing["decode_s"]
            steps = args.new_tokens - 1
            row = {"tokens": n, "batch": bs, "decode_ms_per_step": round(1000 * dec / steps, 1),
                   "decode_ms_per_token": round(1000 * dec / steps / bs, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def train_rows(model_dir, args, peak: float) -> list[dict]:
    """One LoRA r16 step (the paper's seven projections, pause row trained, bf16 autocast, retrieval loss on 8
    answer tokens) on one row of each length."""
    import contextlib

    import torch

    from pausetune.core.config import load_config
    from pausetune.core.evaluation.kvcache import layer_windows
    from pausetune.core.kernels import autocast_dtype
    from pausetune.core.models import load_model
    from pausetune.core.training import objectives as obj
    from pausetune.core.training.lora import (fused_lora, hold_frozen_weights, make_optimizer, prepare_peft,
                                              sparse_token_rows)

    cfg = load_config([str(ROOT / "config" / "config.yaml")])["train"]
    base = load_model(model_dir, "float32", "cpu")
    vocab = base.get_input_embeddings().weight.shape[0]
    model, info = prepare_peft(base, cfg, [vocab - 1], "special")
    amp = autocast_dtype("bfloat16", info["dtype"], "cpu")
    hold_frozen_weights(model, amp)
    sparse_token_rows(model)
    fused_lora(model)
    opt, sched = make_optimizer(model, cfg)
    mcfg, windows = base.config, layer_windows(base)
    rows = []
    for n in args.train_lengths:
        g = torch.Generator().manual_seed(n)
        row = {"input_ids": torch.randint(1000, vocab - 1, (n,), generator=g).tolist(), "answer_start": n - 8,
               "answer_end": n}

        def step():
            model.train()
            batch = tuple(t for t in obj.collate([row], 0, "answer"))
            with torch.autocast(device_type="cpu", dtype=getattr(torch, amp)) if amp else contextlib.nullcontext():
                for piece in obj.Retrieval.pieces(batch):
                    obj.Retrieval.loss(model, piece).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        s = timed(step, args.train_repeat)
        fwd = forward_flops(mcfg, windows, 0, n, head_rows=8)
        flops = 3 * fwd  # the forward, and the backward's input gradients (2x; frozen weights get no gradient)
        r = {"tokens": n, "step_s": round(s, 3), "tok_s": round(n / s, 1), "gflop_s": round(flops / s / 1e9, 1),
             "mfu": round(flops / s / peak, 3)}
        print(json.dumps(r), flush=True)
        rows.append(r)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--lengths", default="4096,8192,16384,32768")
    p.add_argument("--decode-lengths", default="4096,32768")
    p.add_argument("--train-lengths", default="1024,2048,4096,8192")
    p.add_argument("--grain", type=int, default=512, help="eval.prefill_chunk")
    p.add_argument("--new-tokens", type=int, default=17)
    p.add_argument("--stock-max", type=int, default=8192, help="longest prompt the stock forward is timed at")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--train-repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parts", default="prefill,decode,train")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x]
    args.lengths, args.decode_lengths, args.train_lengths = ints(args.lengths), ints(args.decode_lengths), \
        ints(args.train_lengths)

    import torch

    from pausetune.core.kernels import set_threads
    from pausetune.core.models import load_model, load_tokenizer
    from peak import gemm_peak

    set_threads(args.threads)
    peak = gemm_peak(torch.bfloat16, sizes=(1024, 2048))
    out = {"machine": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
           "bf16_gemm_peak_gflop_s": round(peak / 1e9, 1), "grain": args.grain}
    print(json.dumps(out), flush=True)
    parts = args.parts.split(",")
    if "prefill" in parts or "decode" in parts:
        tok = load_tokenizer(args.model_dir)
        model = load_model(args.model_dir, "bfloat16", "cpu")
        if "prefill" in parts:
            out["prefill"] = prefill_rows(model, tok, args, peak)
        if "decode" in parts:
            out["decode"] = decode_rows(model, tok, args)
        del model
    if "train" in parts:
        out["train"] = train_rows(args.model_dir, args, peak)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
