"""Every kernel choice in one home: device, dtype and autocast, threads, the math-library warm-up, which attention
path a forward takes and which fp32 linear kernels run on a CPU, and the record of those choices a cell carries.

A choice here changes bits: GEMMs and attention round differently per dtype, instruction set, thread count, kernel
library and input shape. So each choice is a small function that says what it picks and why, the engine and the
loaders only apply them, and `cell_kernels` records them in every cell's identity.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
STOCK_ATTENTION = "sdpa"  # how models load (and what `model.generate` runs): transformers' own SDPA function


# ---------------------------------------------------------------------------------------------------------
# Device, dtype, threads


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """Does this CPU multiply bf16 natively (AVX512_BF16 or AMX-BF16)? There bf16 GEMMs run ~4x fp32 through MKL
    (measured on an AMD EPYC: 726 vs 180 GFLOP/s on 2 cores); elsewhere torch emulates bf16 and it is slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def torch_dtype(name: str, device: str):
    """`auto`: bf16 on a GPU and on a CPU with native bf16, fp32 elsewhere. The resolved dtype is part of every
    cell's identity and recorded in it, so results of different dtypes are never mixed."""
    import torch

    if name == "auto":
        native = device.startswith("cuda") or (device.startswith("cpu") and cpu_native_bf16())
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, DTYPES[name])


def load_dtype(setting: str, entry_dtype: str) -> str:
    """The dtype eval loads a model with: `eval.dtype`, or the model entry's own where that says `auto`."""
    return setting if setting != "auto" else entry_dtype


def weights_dtype(name: str, device: str, quantization: str = "none"):
    """The torch dtype a model loads in: torch_dtype, except a 4-bit (`nf4`, QLoRA) base, whose other weights and
    matmuls are bf16 (core.training.lora's doc says why not fp32)."""
    import torch

    return torch.bfloat16 if quantization == "nf4" else torch_dtype(name, device)


def dtype_name(name: str, device: str) -> str:
    """torch_dtype as the name a cell records ('bfloat16', 'float32')."""
    return str(torch_dtype(name, device)).replace("torch.", "")


def autocast_dtype(setting: str, weights_dtype: str, device: str) -> str | None:
    """The autocast dtype of a training run, or None. `auto`: bfloat16 when the weights are fp32 and the device
    multiplies bf16 natively (a GPU, or a CPU with AVX512_BF16 / AMX: measured there ~1.5x fp32 per step for
    SmolLM2 LoRA, where plain bf16 weights lose to the casts between bf16 weights and fp32 adapters)."""
    if setting == "none" or weights_dtype != "float32":
        return None
    if setting == "bfloat16":
        return "bfloat16"
    native = device.startswith("cuda") or (device.startswith("cpu") and cpu_native_bf16())
    return "bfloat16" if native else None


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads, when given (else torch's default). On a CPU the count splits every GEMM's
    reduction, so it is part of a cell's identity (cell_kernels)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


# Elementwise math that torch hands to MKL's vector math library (VML) on a CPU, per chunk of a parallel loop.
VML_OPS = ("cos", "sin", "tan", "acos", "asin", "atan", "cosh", "sinh", "tanh", "exp", "expm1", "log", "log10",
           "log1p", "log2", "sqrt", "rsqrt", "erf", "erfc", "erfinv", "trunc", "abs", "lgamma")
_VML_WARM = False


def warm_math_kernels() -> None:
    """Call every VML-backed elementwise op once, on one thread, before any model runs.

    VML picks its code path lazily, on a function's first call. When that first call comes from two threads at once
    (torch splits a large `cos` across its threads: the first RoPE table of a model's first forward), one thread can
    run the first call on another code path, 1 ulp off in fp32. The RoPE table then differs in a few hundred bf16
    values and a cell's log-probs move at the 1e-2 level from one process to the next: the same SmolLM2 tuned cell
    came out three ways in fresh processes, one way after this (docs/reproducibility.md). Small inputs stay on one
    thread, so this settles every code path first. Idempotent; a few microseconds."""
    global _VML_WARM
    if _VML_WARM:
        return
    import torch

    for dtype in (torch.float32, torch.float64):
        x = torch.linspace(0.1, 0.9, 64, dtype=dtype)
        for op in VML_OPS:
            getattr(torch, op)(x)
    _VML_WARM = True


# ---------------------------------------------------------------------------------------------------------
# Attention: which path one call of the engine's attention function takes


def attention_path(device_type: str, q_len: int, kv_len: int, masked: bool, dropout: float, rows: bool) -> str:
    """'rows': a batched decode step (q = 1 with live rows set), each row over its own keys; 'split': q > 1 new
    tokens on a cache, unpadded, the lower-right causal case: two mask-free flash calls merged on a CPU ('split_cpu'),
    SDPA with `causal_lower_right` on CUDA ('lower_right'); 'sdpa': everything else, transformers' stock function
    (the trunk prefill, single decode steps, padded batches), so numerics there are those of `model.generate`."""
    if rows and q_len == 1:
        return "rows"
    if not masked and 1 < q_len < kv_len and dropout == 0.0:
        return "split_cpu" if device_type == "cpu" else "lower_right"
    return STOCK_ATTENTION


# ---------------------------------------------------------------------------------------------------------
# fp32 linear kernels on a CPU: MKL (torch's default for fp32 GEMM) or oneDNN with prepacked weights


# The input-size classes an fp32 linear runs in, each with its own route, and the rows the probe times for it:
# one row (batch-1 decode), a few rows (a batched decode step; eval's batch is 4, fewer as rows finish), and
# prefill-sized inputs. linear_route splits by the same bounds: 1 / 2..15 / >= 16.
LINEAR_CLASSES = {"decode1": 1, "decode": 4, "prefill": 512}
LINEAR_PROBE_VERSION = 2  # 1: prefill and decode only (one row went the 'decode' route)
ONEDNN_MIN_ROWS = 16  # inputs of at least this many rows are "prefill" sized


def linear_route(route: dict, rows: int) -> str:
    """The kernel ('mkl' | 'onednn') a route ({'prefill', 'decode'[, 'decode1']}) gives an fp32 linear whose input
    has `rows` rows: >= 16 'prefill', 2..15 'decode', 1 'decode1' (the 'decode' route where the route has none:
    records from before the one-row class, and linear_route_record, which omits it when equal)."""
    if rows >= ONEDNN_MIN_ROWS:
        return route.get("prefill", "mkl")
    if rows == 1 and "decode1" in route:
        return route["decode1"]
    return route.get("decode", "mkl")


def linear_route_record(route: dict) -> dict:
    """What a cell records as `kernels.linear_fp32` (and hands the engine back): the route per size class, exactly
    as it runs. 'decode1' (one-row inputs) is written only where it differs from 'decode': a record without it
    means one-row inputs take the 'decode' route, which is also how records from before the one-row class read
    (so cells whose routes did not change keep their identity)."""
    out = {"prefill": route["prefill"], "decode": route["decode"]}
    if route.get("decode1", route["decode"]) != route["decode"]:
        out["decode1"] = route["decode1"]
    return out


def engine_linear(linear: str | dict | None, dtype, device_type: str) -> dict | None:
    """The route an engine runs its fp32 linears on: None/'mkl' F.linear; 'onednn' everywhere; 'auto' the machine's
    measured choice (fp32_linear_kernels) for an fp32 model on a CPU, else None; a route dict as given."""
    import torch

    if linear == "auto":
        return fp32_linear_kernels() if dtype == torch.float32 and device_type == "cpu" else None
    if isinstance(linear, str):
        return {"prefill": linear, "decode": linear, "decode1": linear}
    return linear


def _probe_linear(threads: int, kinds=tuple(LINEAR_CLASSES)) -> dict:
    """Time fp32 GEMMs of SmolLM2's decoder shapes through MKL (F.linear) and oneDNN (prepacked weights), for each
    size class in `kinds` (rows: LINEAR_CLASSES); best of 5, alternating. oneDNN wins big on some CPUs (AMD EPYC:
    420 vs 180 GFLOP/s, issue #18) and not on others (this Intel Xeon: MKL as fast for prefill, faster at 1 row)."""
    import time

    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    shapes = [(576, 576), (1536, 576), (576, 1536)]
    out = {}
    for kind in kinds:
        m = LINEAR_CLASSES[kind]
        best = {"mkl": 0.0, "onednn": 0.0}
        for n, k in shapes:
            w, x = torch.randn(n, k), torch.randn(m, k)
            wp = torch.ops.mkldnn._reorder_linear_weight(w, 512)
            fns = {"mkl": lambda: F.linear(x, w),
                   "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, wp, None, "none", [], "")}
            ts = {"mkl": [], "onednn": []}
            for _ in range(6):
                for name, f in fns.items():
                    t0 = time.perf_counter()
                    for _ in range(3 if m > 16 else 30):
                        f()
                    ts[name].append(time.perf_counter() - t0)
            for name in ts:
                best[name] += min(ts[name][1:])
        # oneDNN only when clearly faster: a coin flip on a noisy machine must not pick a different kernel path
        out[kind] = "onednn" if best["onednn"] < 0.85 * best["mkl"] else "mkl"
        out[f"{kind}_onednn_over_mkl"] = round(best["mkl"] / best["onednn"], 3)
    return out


def fp32_linear_kernels(cache_dir: str | Path | None = None) -> dict:
    """The fp32 linear kernel path per input-size class ({'prefill': 'mkl'|'onednn', 'decode': ..., 'decode1': ...};
    LINEAR_CLASSES), measured once per machine (CPU model, torch version, thread count) and kept in
    PAUSETUNE_CACHE/kernels/: the choice is part of a cell's identity, so it must not change from run to run with
    the load. A file from before the one-row class (version 1: prefill and decode) keeps its two choices; only the
    one-row class is probed and added to it (version 2). PAUSETUNE_FP32_LINEAR=mkl|onednn forces one path for all."""
    import hashlib
    import os

    import torch

    forced = os.environ.get("PAUSETUNE_FP32_LINEAR")
    if forced in ("mkl", "onednn"):
        return {k: forced for k in LINEAR_CLASSES} | {"source": "PAUSETUNE_FP32_LINEAR"}
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return {k: "mkl" for k in LINEAR_CLASSES} | {"source": "no oneDNN"}
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    except OSError:
        pass
    threads = torch.get_num_threads()
    key = hashlib.sha256(f"{cpu}|{torch.__version__}|{threads}".encode()).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get("PAUSETUNE_CACHE") or Path.home() / ".cache" / "pausetune")
    path = root / "kernels" / f"fp32_linear_{key}.json"
    res = None
    if path.exists():
        try:
            res = json.loads(path.read_text())
            if not all(res.get(k) in ("mkl", "onednn") for k in ("prefill", "decode")):
                res = None
        except (json.JSONDecodeError, OSError, AttributeError):
            res = None
    missing = [k for k in LINEAR_CLASSES if res is None or res.get(k) not in ("mkl", "onednn")]
    if missing:
        res = (res or {}) | _probe_linear(threads, missing) | {"cpu": cpu, "torch": torch.__version__,
                                                                 "threads": threads,
                                                                 "version": LINEAR_PROBE_VERSION}
        try:
            from .io import write_json

            write_json(path, res)
        except OSError:
            pass
    return {k: res[k] for k in LINEAR_CLASSES} | {"source": "probe"}


@contextlib.contextmanager
def linear_kernels(model, route: dict | None):
    """Within: every fp32 nn.Linear of the model runs through oneDNN with a prepacked weight for the input-size
    classes `route` gives 'onednn' (linear_route), through MKL (F.linear) otherwise. A no-op unless the model is
    fp32 on a CPU and some class's route says oneDNN. The packed copies are dropped on exit."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    p = next(model.parameters())
    use = {rows: linear_route(route, rows) == "onednn" for rows in (1, 2, ONEDNN_MIN_ROWS)} if route else {}
    if not any(use.values()) or p.dtype != torch.float32 or p.device.type != "cpu":
        yield
        return
    one, few, big = use[1], use[2], use[ONEDNN_MIN_ROWS]
    pw = torch.ops.mkldnn._linear_pointwise
    patched = []
    for mod in model.modules():
        if type(mod) is not nn.Linear or mod.weight.dtype != torch.float32:
            continue
        packed = torch.ops.mkldnn._reorder_linear_weight(mod.weight.detach(), 512)

        def fwd(x, mod=mod, packed=packed):
            rows = x.numel() // x.shape[-1]
            if (big if rows >= ONEDNN_MIN_ROWS else one if rows == 1 else few) and x.dtype == torch.float32:
                return pw(x, packed, mod.bias, "none", [], "")
            return F.linear(x, mod.weight, mod.bias)

        mod.forward = fwd
        patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            del mod.forward  # back to the class's forward


# ---------------------------------------------------------------------------------------------------------
# What a cell records


def cell_kernels(device_type: str, dtype: str | None = None) -> dict:
    """The kernel family a cell's numbers come from: on a CPU torch dispatches GEMMs and attention by the
    instruction set (AVX2 / AVX512 / AMX paths round differently) and splits them by thread count, so both are
    part of a cell's identity; in fp32 on a CPU also the linear kernels (MKL or oneDNN, per input size) the machine
    measured fastest (fp32_linear_kernels), which the engine then uses."""
    import torch

    out = {"attention": "pausetune split flash (chunks on a cache), sdpa elsewhere"}
    if device_type == "cpu":
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        # A GEMM's reduction is split by thread: 1 and 2 threads give different bf16 log-probs for the same cell
        # (SmolLM2 pause-tuned, 2K, depth 50: -3.559 vs -3.428), so a cell made with other threads is another cell.
        out["threads"] = torch.get_num_threads()
        out["native_bf16"] = cpu_native_bf16()
        if dtype == "float32":
            out["linear_fp32"] = linear_route_record(fp32_linear_kernels())
    elif device_type == "cuda":
        out["cuda"] = torch.version.cuda
        out["device"] = torch.cuda.get_device_name()
    return out
