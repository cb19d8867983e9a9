"""Benchmark: our LoRA training step (pausetune.core.training.lora + core.training.objectives) against a plain transformers.Trainer + peft step.

Three sides run in the same invocation, one after the other, each in its own subprocess (so each peak-memory figure
is its own): `ours` (today's step), `old` (ours before issue #25: frozen weights cast at every forward under
autocast, peft's pause row copying the whole embedding) and `trainer`, on the same model, the same LoRA config (config `train.lora`, default the paper's r16 on all seven
projections), the same batch shape and the same random token rows. Reported: median step time, tokens/s and
peak memory (CUDA max allocated, or the process's max RSS on a CPU) for each, and ours / Trainer ratios.

    python bench/train_step.py --model-dir data/models/smollm2 --batch 2 --seq-len 256
    python bench/train_step.py --random-shape llama-3.2-3b --device cuda --batch 2 --seq-len 2048
    python bench/train_step.py --random-shape llama-3.2-3b --device cuda --quantization nf4 --seq-len 8192

`--random-shape` builds a model of a real architecture's shape with random weights from its config (no
download); `--model-dir` takes a prepared model folder (data/models/{model}). Timings of random weights are
real timings (the FLOPs do not depend on the values). `--json FILE` writes both results.
On a shared CPU, wall-clock figures move with other jobs' load; tokens per CPU-second (process time of all
threads) is printed too and is the steadier basis for the ours / Trainer ratio there.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SHAPES = {
    "tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=49153, tie_word_embeddings=True,
                           max_position_embeddings=4096)),
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=100000.0,
                                   rms_norm_eps=1e-5)),
    "llama-3.2-1b": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                                   tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0,
                                   rms_norm_eps=1e-5)),
    "llama-3.2-3b": ("llama", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                   num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                                   tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0,
                                   rms_norm_eps=1e-5)),
    "llama-3.1-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                                   tie_word_embeddings=False, max_position_embeddings=131072, rope_theta=500000.0,
                                   rms_norm_eps=1e-5)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                   tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1000000.0)),
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)),
}
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="a prepared model folder (data/models/{model})")
    src.add_argument("--random-shape", choices=sorted(SHAPES), help="random weights of a real architecture's shape")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bf16 on GPU and on CPUs with native bf16, else fp32 (core.kernels.torch_dtype)")
    p.add_argument("--autocast", default="none", choices=["auto", "none", "bfloat16"],
                   help="ours: train.autocast (bf16 matmuls over fp32 weights); the Trainer side uses its bf16 flag")
    p.add_argument("--quantization", default="none", choices=["none", "nf4"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--pause-row", action="store_true",
                   help="also train one embedding row (the pause token's, here the last id), as variant pause does")
    p.add_argument("--target-modules", nargs="*", default=None, help="default: config train.lora.target_modules")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=1, help="alternate ours/trainer this many times; keep each one's best")
    p.add_argument("--only", choices=["ours", "old", "trainer"], default=None, help="run one side (in this process)")
    p.add_argument("--sides", default="ours,old,trainer", help="which sides to run, in this order each round")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def train_cfg(args) -> dict:
    from pausetune.core.config import TrainConfig

    lora = {"target_modules": args.target_modules} if args.target_modules is not None else \
        {"target_modules": GPT2_TARGETS} if args.random_shape == "gpt2" else {}
    return TrainConfig.from_dict({
        "gradient_checkpointing": args.gradient_checkpointing, "quantization": args.quantization,
        "dtype": args.dtype, "grad_accum": args.grad_accum, "batch_size": args.batch, "warmup_steps": 1,
        "max_steps": args.warmup + args.steps, "lora": lora}).to_dict()


def load_base(args, device):
    """The base model, frozen weights not yet wrapped: from a prepared folder or a random real shape."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pausetune.core.kernels import STOCK_ATTENTION, torch_dtype
    from pausetune.core.models import load_model

    if args.model_dir:
        return load_model(args.model_dir, args.dtype, device, args.quantization)
    kind, kw = SHAPES[args.random_shape]
    cfg = AutoConfig.for_model(kind, **kw)
    dtype = torch_dtype(args.dtype, device)
    torch.manual_seed(0)
    if args.quantization == "nf4":  # bitsandbytes quantizes on load: save the random weights once, load 4-bit
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        tmp = tempfile.mkdtemp(prefix="bench-model-")
        model.save_pretrained(tmp)
        del model
        with open(os.path.join(tmp, "prepared.json"), "w") as f:
            json.dump({"name": args.random_shape, "kind": "random", "path": "."}, f)
        return load_model(tmp, args.dtype, device, "nf4")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=STOCK_ATTENTION)
    return model


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_one(args, impl: str) -> dict:
    import torch

    from pausetune.core.kernels import default_device, set_threads
    from pausetune.core.training.lora import make_optimizer, peak_memory_mb, prepare_peft
    from pausetune.core.training.objectives import train_step

    set_threads(args.threads)
    device = args.device or default_device()
    cfg = train_cfg(args)
    t0 = time.perf_counter()
    base = load_base(args, device)
    vocab = base.get_input_embeddings().weight.shape[0]
    model, info = prepare_peft(base, cfg, [vocab - 1] if args.pause_row else None, "special")
    g = torch.Generator().manual_seed(0)
    n_rows = args.batch * args.grad_accum * (args.warmup + args.steps)
    rows = torch.randint(0, vocab, (n_rows, args.seq_len), generator=g)
    load_s = time.perf_counter() - t0
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, cpu, losses = [], [], []
    tokens_per_step = args.batch * args.grad_accum * args.seq_len

    amp_dtype = None
    if impl in ("ours", "old"):
        import contextlib

        from pausetune.core.kernels import autocast_dtype

        amp_dtype = autocast_dtype(args.autocast, info["dtype"], str(device))
        if impl == "ours":  # what stage train does (stages/train.py _fresh_model)
            from pausetune.core.training.lora import fused_lora, hold_frozen_weights, sparse_token_rows

            if amp_dtype:
                hold_frozen_weights(model, amp_dtype)
            sparse_token_rows(model)
            fused_lora(model)

        def amp():
            if amp_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, amp_dtype))

        opt, sched = make_optimizer(model, cfg)
        per = args.batch * args.grad_accum
        for s in range(args.warmup + args.steps):
            chunk = rows[s * per:(s + 1) * per]
            micro = [chunk[k * args.batch:(k + 1) * args.batch].to(device) for k in range(args.grad_accum)]
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            with amp():
                loss, _, _ = train_step(model, micro, opt, sched, cfg["max_grad_norm"])
            sync(device)
            if s >= args.warmup:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                losses.append(loss)
    else:
        from transformers import Trainer, TrainerCallback, TrainingArguments

        class Rows(torch.utils.data.Dataset):
            def __len__(self):
                return len(rows)

            def __getitem__(self, i):
                return {"input_ids": rows[i], "labels": rows[i]}

        class Timer(TrainerCallback):
            def on_step_begin(self, a, state, control, **kw):
                sync(device)
                self.t, self.c = time.perf_counter(), time.process_time()

            def on_step_end(self, a, state, control, **kw):
                sync(device)
                if state.global_step > args.warmup:
                    times.append(time.perf_counter() - self.t)
                    cpu.append(time.process_time() - self.c)

            def on_log(self, a, state, control, logs=None, **kw):
                if logs and "loss" in logs and state.global_step > args.warmup:
                    losses.append(logs["loss"])

        bf16 = next(p for p in base.parameters() if p.is_floating_point()).dtype == torch.bfloat16
        targs = TrainingArguments(
            output_dir=tempfile.mkdtemp(prefix="bench-trainer-"), per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=args.grad_accum, max_steps=args.warmup + args.steps,
            learning_rate=cfg["lr"], lr_scheduler_type="linear", warmup_steps=1, weight_decay=cfg["weight_decay"],
            max_grad_norm=cfg["max_grad_norm"], optim="adamw_torch", logging_steps=1, save_strategy="no",
            report_to=[], disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
            use_cpu=not str(device).startswith("cuda"), bf16=bf16, seed=0,
            gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if args.gradient_checkpointing else None)
        Trainer(model=model, args=targs, train_dataset=Rows(), callbacks=[Timer()]).train()
    med = statistics.median(times)
    mem = peak_memory_mb(device)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peak import gemm_peak, lora_step_flops

    step_flops = lora_step_flops(base.config, args.batch * args.grad_accum, args.seq_len)
    wdtype = next(p for p in base.parameters() if p.is_floating_point()).dtype
    amp_on = impl in ("ours", "old") and args.autocast != "none" and wdtype == torch.float32 and amp_dtype is not None
    peak = gemm_peak(torch.bfloat16 if (wdtype == torch.uint8 or amp_on) else wdtype, str(device))
    return {"autocast": amp_dtype if impl in ("ours", "old") else None, "step_flop": step_flops, "achieved_flops": step_flops / med, "gemm_peak_flops": peak,
            "mfu": step_flops / med / peak,"impl": impl, "device": str(device), "step_s_median": med, "step_s_min": min(times), "step_s_all": times,
            "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_step / med,
            "tokens_per_s_best": tokens_per_step / min(times),
            "cpu_s_median": statistics.median(cpu), "tokens_per_cpu_s": tokens_per_step / statistics.median(cpu), "peak_mem_mb": mem[0],
            "mem_kind": mem[1],
            "loss_mean": statistics.mean(losses) if losses else None, "load_s": load_s,
            "trainable_params": info["trainable_params"], "dtype": info["dtype"], "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    args = parse(argv)
    if args.only:
        r = run_one(args, args.only)
        print("BENCH_RESULT " + json.dumps(r), flush=True)
        if args.json:  # one side asked for by hand (the alternating parent passes its children no --json)
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), args.only: r}, f, indent=2)
        return 0
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for i, a in enumerate(argv) if a != "--json" and not a.startswith("--json=")
            and not (i and argv[i - 1] == "--json")]
    results: dict = {}
    for _ in range(args.rounds):
        for impl in args.sides.split(","):
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--only", impl],
                                  capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(proc.stderr[-4000:])
                print(f"train_step bench: {impl} failed (rc {proc.returncode})", file=sys.stderr)
                return 1
            r = json.loads(line[len("BENCH_RESULT "):])
            if impl not in results or r["step_s_median"] < results[impl]["step_s_median"]:
                results[impl] = r
    o, t, old = results.get("ours"), results.get("trainer"), results.get("old")
    o = o or old or t
    what = args.model_dir or f"random {args.random_shape}"
    print(f"model {what}, {o['device']}, {o['dtype']}, quantization {args.quantization}, "
          f"batch {args.batch} x accum {args.grad_accum} x seq {args.seq_len}, {o['threads']} threads, "
          f"grad-ckpt {args.gradient_checkpointing}, pause row {args.pause_row}, {o['trainable_params']} trainable, "
          f"{args.steps} timed steps after {args.warmup}, best of {args.rounds} round(s)")
    for r in [results[k] for k in args.sides.split(",")]:
        print(f"  {r['impl']:8s} step {r['step_s_median']:.3f} s median, {r['step_s_min']:.3f} s min  "
              f"{r['tokens_per_s']:9.1f} tok/s (best step {r['tokens_per_s_best']:.1f})  "
              f"{r['tokens_per_cpu_s']:8.1f} tok/CPU-s  peak {r['peak_mem_mb']:8.1f} MB ({r['mem_kind']})  "
              f"loss {r['loss_mean']:.4f}  {r['achieved_flops'] / 1e9:.1f} GFLOP/s = {100 * r['mfu']:.1f}% of "
              f"this machine's {r['gemm_peak_flops'] / 1e9:.0f} GFLOP/s GEMM peak ({r['dtype']})")
    ratios = {}
    for label, a, b in (("ours / Trainer", o, t), ("ours / old", o, old)):
        if a is None or b is None or a is b:
            continue
        ratio = ratios[label] = {"tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                                 "tokens_per_s_best": a["tokens_per_s_best"] / b["tokens_per_s_best"],
                                 "tokens_per_cpu_s": a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"],
                                 "peak_mem": a["peak_mem_mb"] / b["peak_mem_mb"]}
        print(f"  {label}: throughput {ratio['tokens_per_s']:.3f}x (median), {ratio['tokens_per_s_best']:.3f}x "
              f"(best step), {ratio['tokens_per_cpu_s']:.3f}x (per CPU-second), peak memory {ratio['peak_mem']:.3f}x")
    if old is not None and o is not old:
        print(f"  loss, ours against old (same rows, same init): {o['loss_mean']:.6f} vs {old['loss_mean']:.6f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **results, "ratio": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
