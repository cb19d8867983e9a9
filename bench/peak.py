"""This machine's GEMM peak for a dtype, measured in the same run as the benchmark that quotes it.

A benchmark's achieved FLOP/s means little alone: on 2 CPU cores fp32 GEMM through MKL peaks near 180 GFLOP/s and
bf16 near 726 (AVX512_BF16), on an H200 bf16 near 790 TFLOP/s. `gemm_peak` times square matmuls of a few sizes
(best of several) so a benchmark can print its share of the peak (an MFU, as nanoGPT prints one) next to the
ratio against its naive baseline.
"""
from __future__ import annotations

import time


def gemm_peak(dtype, device: str = "cpu", sizes=(1024, 2048), repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul over `sizes` (2 n^3 FLOP each)."""
    import torch

    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            (a @ b)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if i:  # the first is a warm-up
                best = max(best, 2 * n ** 3 / dt)
    return best


def decoder_dims(cfg) -> dict:
    cfg = cfg.get_text_config(decoder=True)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    h, kv, layers = cfg.hidden_size, cfg.num_key_value_heads, cfg.num_hidden_layers
    per_layer = h * cfg.num_attention_heads * hd * 2 + h * kv * hd * 2 + 3 * h * cfg.intermediate_size
    return {"linear_params": per_layer * layers, "layers": layers, "heads": cfg.num_attention_heads, "head_dim": hd,
            "hidden": h, "vocab": cfg.vocab_size}


def lora_step_flops(cfg, batch: int, seq_len: int) -> float:
    """FLOPs of one LoRA training step (frozen base): forward 2 per weight per token, backward 2 more for the
    input gradients (no weight gradients of frozen weights; LoRA's own are negligible), attention (causal) the
    same 1 + 1 forward/backward split counted 2x for backward, and the LM head over every position."""
    d = decoder_dims(cfg)
    tokens = batch * seq_len
    linear = 4 * d["linear_params"] * tokens
    attn_fwd = 4 * d["layers"] * d["heads"] * d["head_dim"] * batch * seq_len * (seq_len + 1) / 2
    head = 4 * d["hidden"] * d["vocab"] * tokens
    return linear + 3 * attn_fwd + head
