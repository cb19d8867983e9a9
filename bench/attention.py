"""Cached-prefix attention against a plain prefill of the same total length, measured in the same run.

The eval engine computes each cell's tokens [P, N) on top of a cached prefix of P tokens
(`pausetune.core.evaluation.engine._split_lower_right_cpu`: two mask-free flash calls merged by their log-sum-exp). A plain
prefill of N tokens (HF's path: one causal SDPA call, GQA in the kernel) is the speed to match. Speed here is
causal attention FLOP/s (4 x heads x head_dim per attended query-key pair), so the chunk's smaller amount of work
is not counted as speed. Target: chunk >= 0.9 x plain.

    python bench/attention.py --threads 2                        # SmolLM2 shapes, bf16 + fp32, 2K + 8K
    python bench/attention.py --threads 2 --model-dir data/models/smollm2 --lengths 2048   # + whole model

`--breakdown` also times the plain kernel's parts as separate ops (Q K^T and P V as batched GEMMs in the dtype,
the fp32 softmax over the scores) to show where the bf16 path loses against the GEMM peak. `--model-dir` adds the
whole-model figure: a SmolLM2 prefill of N tokens against N/2 on a cache of N/2 (engine attention), FLOP/s of
the full forward (bench/eval_grid.prefill_flops). Runs alternate A/B `--repeat` times; medians are printed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = dict(heads=9, kv_heads=3, head_dim=64)


def attn_flops(heads: int, head_dim: int, start: int, end: int) -> float:
    """Causal attention FLOPs of queries start..end-1 (each sees t+1 keys): QK^T and PV, 2 FLOP per MAC."""
    return 4 * heads * head_dim * (start + 1 + end) * (end - start) / 2


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def attention_case(dtype, n: int, repeat: int, heads: int, kv_heads: int, head_dim: int, breakdown: bool) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "workflow"))
    from pausetune.core.evaluation.engine import _split_lower_right_cpu

    torch.manual_seed(0)
    p = n // 2
    # The layouts the model produces: queries [b, q, h, d] transposed; K/V views of a larger cache buffer.
    q = torch.randn(1, n, heads, head_dim).to(dtype).transpose(1, 2)
    kbuf = torch.randn(1, kv_heads, n + 64, head_dim).to(dtype)
    vbuf = torch.randn(1, kv_heads, n + 64, head_dim).to(dtype)
    k, v = kbuf[:, :, :n], vbuf[:, :, :n]
    qs = q[:, :, p:]

    def plain():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def chunk():
        return _split_lower_right_cpu(qs, k, v, None)

    ref = F.scaled_dot_product_attention(qs, k.repeat_interleave(heads // kv_heads, 1),
                                         v.repeat_interleave(heads // kv_heads, 1),
                                         attn_mask=torch.ones(n - p, n, dtype=torch.bool).tril(p))
    err = float((chunk().float() - ref.float()).abs().max())
    plain(), chunk()  # warm-up
    tp, tc = [], []
    for _ in range(repeat):  # alternate
        tp.append(_timed(plain))
        tc.append(_timed(chunk))
    fp, fc = attn_flops(heads, head_dim, 0, n), attn_flops(heads, head_dim, p, n)
    mp, mc = statistics.median(tp), statistics.median(tc)
    out = {"dtype": str(dtype).replace("torch.", ""), "n": n, "cached": p, "plain_s": round(mp, 5),
           "chunk_s": round(mc, 5), "plain_gflops": round(fp / mp / 1e9, 1), "chunk_gflops": round(fc / mc / 1e9, 1),
           "ratio": round((fc / mc) / (fp / mp), 3), "max_abs_err_vs_masked_sdpa": err}
    if breakdown:
        # The flash kernel's work per block, as separate ops on a cache-resident block (256 queries x 512 keys, what
        # the CPU kernel tiles by): Q K^T and P V as GEMMs in the dtype, the softmax (exp, max, sum) in fp32 as the
        # kernel does it for every dtype. Their per-score costs, scaled to the plain call's scores, say where its
        # time goes.
        qb = torch.randn(heads, 256, head_dim).to(dtype)
        kb = torch.randn(heads, 512, head_dim).to(dtype)
        vb = torch.randn(heads, 512, head_dim).to(dtype)
        sb = torch.bmm(qb, kb.transpose(1, 2)).float()
        pb = sb.softmax(-1).to(dtype)
        reps = max(3, repeat)
        t_qk = statistics.median(_timed(lambda: torch.bmm(qb, kb.transpose(1, 2))) for _ in range(reps))
        t_sm = statistics.median(_timed(lambda: torch.softmax(sb, -1).to(dtype)) for _ in range(reps))
        t_pv = statistics.median(_timed(lambda: torch.bmm(pb, vb)) for _ in range(reps))
        scores = heads * 256 * 512
        causal_scores = heads * n * (n + 1) / 2
        parts = {k: v / scores * causal_scores for k, v in (("qk", t_qk), ("softmax", t_sm), ("pv", t_pv))}
        out["breakdown"] = {"est_qk_s": round(parts["qk"], 4), "est_softmax_s": round(parts["softmax"], 4),
                            "est_pv_s": round(parts["pv"], 4),
                            "softmax_share_of_est": round(parts["softmax"] / sum(parts.values()), 3),
                            "gemm_gflops": round(2 * 2 * scores * head_dim / (t_qk + t_pv) / 1e9, 1)}
    return out


def model_case(model_dir: str, dtype_name: str, n: int, repeat: int) -> dict:
    import random

    import torch

    sys.path.insert(0, str(ROOT / "workflow"))
    sys.path.insert(0, str(ROOT / "bench"))
    from eval_grid import prefill_flops
    from pausetune.core.evaluation.engine import ATTN_NAME, Engine, attention_impl
    from pausetune.core.evaluation.kvcache import BufferCache, num_layers
    from pausetune.core.models import load_model

    model = load_model(model_dir, dtype_name, "cpu")
    rng = random.Random(0)
    ids = [rng.randrange(1000, 20000) for _ in range(n)]
    p = n // 2
    eng = Engine(model, [], 1, prefill_chunk=n)  # one chunk per call: the kernels, not the grain
    cache = BufferCache(num_layers(model), n + 8)
    with torch.inference_mode(), attention_impl(model, ATTN_NAME):
        eng._forward(ids[:p], cache, 0)

        def plain():
            c = BufferCache(num_layers(model), n + 8)
            eng._forward(ids, c, 0)

        def chunk():
            cache.truncate(p)
            eng._forward(ids[p:], cache, p)

        tp, tc = [], []
        for _ in range(repeat):
            tp.append(_timed(plain))
            tc.append(_timed(chunk))
    fp, fc = prefill_flops(model.config, 0, n), prefill_flops(model.config, p, n)
    mp, mc = statistics.median(tp), statistics.median(tc)
    return {"dtype": dtype_name, "n": n, "cached": p, "plain_s": round(mp, 3), "chunk_s": round(mc, 3),
            "plain_gflops": round(fp / mp / 1e9, 1), "chunk_gflops": round(fc / mc / 1e9, 1),
            "ratio": round((fc / mc) / (fp / mp), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="2048,8192")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--breakdown", action="store_true")
    p.add_argument("--model-dir", default=None, help="also the whole model (a prepared SmolLM2 folder)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    sys.path.insert(0, str(ROOT / "workflow"))
    from pausetune.core.kernels import set_threads

    set_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    dtypes = args.dtypes.split(",")
    res = {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "attention": [], "model": []}
    print(f"attention, SmolLM2 shapes ({SMOLLM2}), {res['threads']} threads; chunk = last N/2 on a cache of N/2; "
          "GFLOP/s of causal attention, medians of alternating runs", flush=True)
    for dt in dtypes:
        for n in lengths:
            r = attention_case(getattr(torch, dt), n, args.repeat, SMOLLM2["heads"], SMOLLM2["kv_heads"],
                               SMOLLM2["head_dim"], args.breakdown)
            res["attention"].append(r)
            extra = f"  {r['breakdown']}" if "breakdown" in r else ""
            print(f"  {dt:>8} N={n:5d}: plain {1e3 * r['plain_s']:8.1f} ms {r['plain_gflops']:6.1f} GFLOP/s | chunk "
                  f"{1e3 * r['chunk_s']:8.1f} ms {r['chunk_gflops']:6.1f} GFLOP/s | ratio {r['ratio']:.2f} "
                  f"(max err {r['max_abs_err_vs_masked_sdpa']:.1e}){extra}", flush=True)
    if args.model_dir:
        print("whole model (SmolLM2): prefill N against N/2 on a cache of N/2, GFLOP/s of the full forward", flush=True)
        for dt in dtypes:
            for n in lengths:
                r = model_case(args.model_dir, dt, n, args.repeat)
                res["model"].append(r)
                print(f"  {dt:>8} N={n:5d}: plain {r['plain_s']:7.2f} s {r['plain_gflops']:6.1f} GFLOP/s | chunk "
                      f"{r['chunk_s']:7.2f} s {r['chunk_gflops']:6.1f} GFLOP/s | ratio {r['ratio']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
