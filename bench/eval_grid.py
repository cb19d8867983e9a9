"""Eval-engine benchmark: our engine (prefix-KV reuse, split-causal attention, batched greedy decode) against a
naive per-cell `model.generate(do_sample=False)` loop, measured in the same run on the same prompts.

Prints cells/s and prompt tokens/s for both, the ratio, the prefill FLOP count (with and without reuse) and the
achieved TFLOP/s, and checks the greedy answers are equal (exit 1 if not, unless --allow-mismatch).

Real model, real haystack (CPU):
    python bench/eval_grid.py data/models/smollm2 --haystack data/paragraphs/paul_graham/heuristic.parquet \\
        --lengths 1000,2000,4000 --depths 0,25,50,75,100
Random weights of a real shape (timing only; answers are noise, equality is reported, not required):
    python bench/eval_grid.py data/models/smollm2 --random-shape llama-3.2-3b --device cuda \\
        --lengths 16000,32000 --depths 0,50,100
    python bench/eval_grid.py data/models/smollm2 --random-shape tiny --lengths 600,1200   # CPU smoke test
Cost of the per-cell measures (eval.measure: answer log-prob, attention shares) against the same grid without:
    python bench/eval_grid.py data/models/smollm2 --haystack data/paragraphs/paul_graham/heuristic.parquet \
        --lengths 1000,2000 --depths 0,50,100 --measure-cost --skip-naive --repeat 3
What a prefill grain (eval.prefill_chunk) costs in prefill FLOPs, from the token ids alone (no weights run):
    python bench/eval_grid.py data/models/smollm2 --haystack data/paragraphs/paul_graham/heuristic.parquet \
        --lengths 1000,2000,4000,8000 --depths 0,10,20,30,40,50,60,70,80,90,100 --plan-grains 0,128,256,512,1024
The model dir gives the tokenizer (and, without --random-shape, the weights). Without --haystack the haystack is
random ordinary tokens with a period every ~20 (only for --random-shape).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=49152, max_position_embeddings=16384,
                 tie_word_embeddings=True),
}


def prefill_flops(cfg, start: int, end: int) -> float:
    """Forward FLOPs of positions start..end-1 on top of a cache of `start`: 2 x non-embedding params per token
    plus 4 x layers x (heads x head_dim) per token per attended position (QK^T and PV), causal."""
    cfg = cfg.get_text_config(decoder=True)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    h, kv, layers, inter = cfg.hidden_size, cfg.num_key_value_heads, cfg.num_hidden_layers, cfg.intermediate_size
    per_layer = h * cfg.num_attention_heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter
    n = end - start
    attended = (start + 1 + end) * n / 2  # sum over t in [start, end) of (t + 1)
    return 2 * per_layer * layers * n + 4 * layers * cfg.num_attention_heads * hd * attended


def grid_prompts(args, tok):
    """The grid's cells as eval builds them (core.evaluation.cells.build_prompts), on a real or a random-token haystack."""
    sys.path.insert(0, str(ROOT / "workflow"))
    from pausetune.core.evaluation.cells import build_prompts
    from pausetune.core.config import load_config
    from pausetune.core.data.haystack import build_stream, essay_order, haystack_ids, load_essays

    config = load_config([str(ROOT / "config" / "config.yaml")], json.dumps({
        "models": {"bench": {"source": {"kind": "path", "path": str(args.model_dir)}, "chat_template": True}},
        "eval": {"max_new_tokens": args.max_new_tokens, "buffer": args.buffer}}))
    need = max(args.lengths)
    if args.haystack:
        essays = dict(load_essays(args.haystack))
        stream = build_stream(tok, essays, essay_order(haystack_ids(list(essays), config), args.seed), need, None)
    else:
        rng = random.Random(args.seed)
        period = tok.encode(".", add_special_tokens=False)[0]
        stream = [period if rng.random() < 0.05 else rng.randrange(1000, 20000) for _ in range(need)]
    grid = [(args.task, n, d) for n in args.lengths for d in args.depths]
    args.prompt_format, prompts = build_prompts(tok, config | {"seed": 0}, "bench", stream, args.seed, grid)
    return [((n, d), cp, inst) for (_, n, d), (inst, cp) in zip(grid, prompts)]


def plan_grains(args, tok) -> int:
    """Prefill FLOPs per grain over the grid's length blocks (the engine's own plan, core.evaluation.kvcache.prefill_plan)."""
    from transformers import AutoConfig

    from pausetune.core.evaluation.kvcache import prefill_plan

    mcfg = AutoConfig.from_pretrained(args.model_dir)
    cells = grid_prompts(args, tok)
    blocks: dict = {}
    for (n, _), cp, _ in cells:
        blocks.setdefault(n, []).append(cp)
    naive = sum(prefill_flops(mcfg, 0, len(cp.ids)) for _, cp, _ in cells)
    rows = {"per_cell": {"tokens": sum(len(cp.ids) for _, cp, _ in cells), "tflop": round(naive / 1e12, 3)}}
    for g in (int(x) for x in args.plan_grains.split(",")):
        tokens = flop = 0
        for cps in blocks.values():
            ids = [cp.ids for cp in cps]
            trunk, steps = prefill_plan(ids, [cp.shareable for cp in cps], g or 1)
            tokens += len(trunk) + sum(len(ids[i]) - keep for i, keep in steps)
            flop += prefill_flops(mcfg, 0, len(trunk)) + sum(prefill_flops(mcfg, keep, len(ids[i])) for i, keep in steps)
        rows[f"grain_{g}"] = {"tokens": tokens, "tflop": round(flop / 1e12, 3), "vs_per_cell": round(naive / flop, 3)}
    for k, v in rows.items():
        print(f"{k:>12}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "workflow"))
    from pausetune.core.config import EvalConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", help="a prepared model folder (data/models/{model}): tokenizer, and weights")
    p.add_argument("--haystack", nargs="*", default=None, help="paragraph parquet(s); default: random tokens")
    p.add_argument("--lengths", default="1000,2000,4000")
    p.add_argument("--depths", default="0,25,50,75,100")
    p.add_argument("--task", default="single")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--buffer", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=EvalConfig.from_dict({}).batch_size)
    p.add_argument("--prefill-chunk", type=int, default=EvalConfig.from_dict({}).prefill_chunk,
                   help="the prefill grain (default: the schema's eval.prefill_chunk)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--random-shape", choices=sorted(SHAPES), default=None)
    p.add_argument("--skip-naive", action="store_true", help="engine only (no equality check, no ratio)")
    p.add_argument("--ablations", action="store_true",
                   help="also: engine with stock SDPA for chunks on a cache, and engine without reuse")
    p.add_argument("--repeat", type=int, default=1,
                   help="run engine and naive alternately this many times; report the fastest of each (robust "
                        "on a shared machine)")
    p.add_argument("--measure-cost", action="store_true",
                   help="also run the engine with the per-cell measures (logprob, attention) and report the ratio")
    p.add_argument("--linear", default="auto", help="fp32 linear kernels: auto (the machine's measured choice) | mkl "
                   "| onednn (engine side; naive generate always runs the stock path)")
    p.add_argument("--no-peak", action="store_true", help="skip the GEMM peak measurement (bench/peak.py)")
    p.add_argument("--plan-grains", default=None,
                   help="only print the prefill tokens and FLOPs each grain (0: token-exact reuse, the engine before "
                        "issue #29) computes per length block, against per-cell prefill; no weights run")
    p.add_argument("--allow-mismatch", action="store_true")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.depths = [float(x) for x in args.depths.split(",")]

    import torch

    sys.path.insert(0, str(ROOT / "workflow"))
    from pausetune.core.evaluation.engine import Engine, Request, eos_ids_of, generate_reference
    from pausetune.core.evaluation.kvcache import prefill_plan
    from pausetune.core.kernels import STOCK_ATTENTION, set_threads, torch_dtype
    from pausetune.core.models import load_model, load_tokenizer

    set_threads(args.threads)
    dtype = torch_dtype(args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"), args.device)
    tok = load_tokenizer(args.model_dir)
    if args.plan_grains is not None:
        return plan_grains(args, tok)
    if args.random_shape:
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        cfg = LlamaConfig(**SHAPES[args.random_shape], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        with torch.device(args.device):  # random weights of the real shape, built in place in bf16 (no download)
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=STOCK_ATTENTION).eval()
    else:
        model = load_model(args.model_dir, str(dtype).replace("torch.", ""), args.device)
    cells = grid_prompts(args, tok)
    eos = eos_ids_of(model, tok)
    prompt_tokens = sum(len(cp.ids) for _, cp, _ in cells)
    out = {"model": args.random_shape or str(args.model_dir), "device": args.device, "dtype": str(dtype),
           "threads": torch.get_num_threads(), "lengths": args.lengths, "depths": args.depths,
           "cells": len(cells), "prompt_tokens": prompt_tokens, "max_new_tokens": args.max_new_tokens,
           "batch_size": args.batch_size, "prefill_chunk": args.prefill_chunk}

    def run_engine(label, measure=False, **kw):
        from pausetune.core.evaluation.cells import cell_measure

        eng = Engine(model, eos, args.max_new_tokens, batch_size=kw.pop("batch_size", args.batch_size),
                     prefill_chunk=args.prefill_chunk, linear=args.linear, **kw)
        out.setdefault("linear_route", eng.linear)
        what = ["logprob", "attention"] if measure else []
        plain = args.prompt_format == "plain"
        reqs = [Request(key, cp.ids, cp.shareable, cell_measure(tok, task, cp, None, what, plain))
                for key, cp, task in cells]
        t0 = time.perf_counter()
        res = {r.key: r for r in eng.run(reqs)}
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        if label in out and out[label]["wall_s"] <= wall:  # --repeat: keep the fastest run
            print(f"{label:>14}: {wall:8.2f} s  (slower repeat, not kept)", flush=True)
            return {k: r.new_ids for k, r in res.items()}
        trunk = max(r.timing.get("trunk_prefill_s", 0.0) for r in res.values())
        prefill = trunk + sum(r.timing["prefill_s"] for r in res.values())
        lens = {key: len(cp.ids) for key, cp, _ in cells}
        keep = {k: r.timing["shared_prefix_tokens"] for k, r in res.items()}
        trunk_len = len(prefill_plan([cp.ids for _, cp, _ in cells], [cp.shareable for _, cp, _ in cells],
                                     eng.chunk, eng.reuse)[0])
        flops = (prefill_flops(model.config, 0, trunk_len) if trunk_len else 0.0) + sum(
            prefill_flops(model.config, keep[k], lens[k]) for k in lens)
        computed = trunk_len + sum(lens[k] - keep[k] for k in lens)
        out[label] = {"wall_s": round(wall, 3), "cells_per_s": round(len(cells) / wall, 4),
                      "prompt_tokens_per_s": round(prompt_tokens / wall, 1), "prefill_s": round(prefill, 3),
                      "prefill_tokens_computed": computed, "prefill_tflop": round(flops / 1e12, 4),
                      "prefill_flop": flops,
                      "prefill_tflops_per_s": round(flops / prefill / 1e12, 4) if prefill else None,
                      "measure_s": round(sum(r.timing.get("measure_s", 0.0) for r in res.values()), 3)}
        print(f"{label:>14}: {wall:8.2f} s  {len(cells) / wall:7.3f} cells/s  {prompt_tokens / wall:9.1f} prompt tok/s"
              f"  prefill {prefill:7.2f} s for {computed} tokens ({flops / 1e12:.3f} TFLOP,"
              f" {flops / max(prefill, 1e-9) / 1e12:.3f} TFLOP/s)", flush=True)
        return {k: r.new_ids for k, r in res.items()}

    print(f"{out['model']} on {args.device} ({dtype}, {out['threads']} threads): {len(cells)} cells, "
          f"{prompt_tokens} prompt tokens, lengths {args.lengths} x depths {args.depths}", flush=True)
    for rep in range(max(1, args.repeat)):
        got = run_engine("engine")
        if args.measure_cost:
            measured = run_engine("engine_measure", measure=True)
            if measured != got:
                print("answers differ with the measures on", file=sys.stderr)
                return 1
        if args.ablations:
            run_engine("engine_stock", attn="sdpa")
            run_engine("engine_noreuse", reuse_prefix=False, batch_size=1)
        if args.skip_naive:
            continue
        t0 = time.perf_counter()
        ref = {}
        for key, cp, _ in cells:
            ref[key], _ = generate_reference(model, cp.ids, args.max_new_tokens, eos)
        wall = time.perf_counter() - t0
        flops = sum(prefill_flops(model.config, 0, len(cp.ids)) for _, cp, _ in cells)
        if "naive" not in out or wall < out["naive"]["wall_s"]:
            out["naive"] = {"wall_s": round(wall, 3), "cells_per_s": round(len(cells) / wall, 4),
                            "prompt_tokens_per_s": round(prompt_tokens / wall, 1),
                            "prefill_tflop": round(flops / 1e12, 4), "prefill_flop": flops,
                            "prefill_tokens_computed": prompt_tokens}
        print(f"{'naive generate':>14}: {wall:8.2f} s  {len(cells) / wall:7.3f} cells/s  "
              f"{prompt_tokens / wall:9.1f} prompt tok/s  prefill {prompt_tokens} tokens ({flops / 1e12:.3f} TFLOP)",
              flush=True)
    out["repeat"] = max(1, args.repeat)
    if args.measure_cost:
        a, b = out["engine"]["wall_s"], out["engine_measure"]["wall_s"]
        inside = out["engine_measure"]["measure_s"]
        out["measure_overhead"] = round(b / a - 1, 4)
        out["measure_share"] = round(inside / (b - inside), 4)  # measure steps against the rest of the same run
        print(f"measures (logprob + attention): {b:.2f} s against {a:.2f} s without: {100 * (b / a - 1):+.1f}% time per "
              f"cell; {inside:.2f} s inside the measure steps, {100 * out['measure_share']:.1f}% of the rest of that "
              f"run (the figure that does not depend on load between runs)")
    if not args.no_peak:  # this machine's GEMM peak for the dtype, measured now (an MFU, as bench/train_step.py)
        sys.path.insert(0, str(ROOT / "bench"))
        from peak import gemm_peak

        peak = gemm_peak(dtype, args.device)
        out["gemm_peak_gflops"] = round(peak / 1e9, 1)
        print(f"GEMM peak ({dtype}, {out['threads']} threads, bench/peak.py): {peak / 1e9:.0f} GFLOP/s", flush=True)
        for label in [k for k in ("engine", "engine_measure", "engine_stock", "engine_noreuse", "naive") if k in out]:
            r = out[label]
            # prefill: FLOPs over prefill seconds (the engine times them; naive only has its wall, decode included)
            pre = r["prefill_flop"] / r["prefill_s"] if r.get("prefill_s") else None
            whole = r["prefill_flop"] / r["wall_s"]
            r["prefill_gflops"] = round(pre / 1e9, 1) if pre else None
            r["wall_gflops"] = round(whole / 1e9, 1)
            r["prefill_share_of_peak"] = round(pre / peak, 3) if pre else None
            r["wall_share_of_peak"] = round(whole / peak, 3)
            pre_txt = f"prefill {pre / 1e9:6.1f} GFLOP/s ({100 * pre / peak:4.1f}% of peak), " if pre else ""
            print(f"{label:>14}: {pre_txt}prefill FLOP over wall {whole / 1e9:6.1f} GFLOP/s "
                  f"({100 * whole / peak:4.1f}% of peak)", flush=True)
    if not args.skip_naive:
        equal = sum(got[k] == ref[k] for k in ref)  # the last repeat of each (all repeats are deterministic)
        out["answers_equal"] = f"{equal}/{len(ref)}"
        out["speedup"] = round(out["naive"]["wall_s"] / out["engine"]["wall_s"], 3)
        out["flop_bound"] = round(out["naive"]["prefill_flop"] / out["engine"]["prefill_flop"], 3)
        print(f"speedup engine vs naive: {out['speedup']:.2f}x (prefill FLOP ratio {out['flop_bound']:.2f}x); "
              f"answers equal {equal}/{len(ref)}")
        if tok is not None and not args.random_shape:
            for (key, cp, task) in cells:
                ans = tok.decode(got[key], skip_special_tokens=True).strip().replace("\n", " ")
                print(f"  len{key[0]} depth{key[1]:g}: {ans[:90]!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    if not args.skip_naive and equal != len(cells) and not (args.allow_mismatch or args.random_shape):
        print("answers differ between engine and naive generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
