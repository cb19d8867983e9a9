"""Checkpoints (a trained adapter + tokenizer + manifest): hashes and loading for evaluation."""
from __future__ import annotations

from pathlib import Path

from .io import PausetuneError, read_json, sha256_file


def dir_hashes(d: Path) -> dict:
    return {str(p.relative_to(d)): sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file()}


def checkpoint_adapter_hash(ckpt_dir: str | Path) -> str:
    """sha256 of the checkpoint's adapter weights (adapter/adapter_model.safetensors), for eval provenance."""
    path = Path(ckpt_dir) / "adapter" / "adapter_model.safetensors"
    if not path.exists():
        raise PausetuneError(f"{path}: missing (not a finished pausetune checkpoint)")
    got = sha256_file(path)
    # The manifest is the declared output, so Snakemake cannot see a damaged adapter: compare before loading.
    mpath = Path(ckpt_dir) / "manifest.json"
    want = read_json(mpath)["adapter_sha256"]
    if got != want:
        raise PausetuneError(
            f"{ckpt_dir}: checkpoint damaged (adapter/adapter_model.safetensors has sha256 {got[:12]}..., its manifest "
            f"records {want[:12]}...); retrain it: snakemake --cores all --force {mpath}")
    return got


def check_adapters(ckpt_dirs) -> None:
    """Each finished checkpoint's adapter against its manifest, while the DAG is built: Snakemake sees only the
    manifest, so a damaged adapter under up-to-date cells would go unnoticed until an eval loads it. Hashed each
    time (no mtime + size shortcut: bit rot keeps both): a LoRA adapter is megabytes, hashed in well under a second."""
    for d in ckpt_dirs:
        if (Path(d) / "manifest.json").exists():
            checkpoint_adapter_hash(d)


# ------------------------------------------------------------------------------------------------ loading
def load_checkpoint(model_dir, ckpt_dir, dtype: str = "auto", device: str | None = None,
                    quantization: str = "none", merge: bool = True):
    """Base model + trained adapter for evaluation: returns (model, tokenizer, manifest), model in eval mode.

    The base comes from `model_dir` (a prepared model folder), the tokenizer from `ckpt_dir/tokenizer` (pause
    token included), the embeddings are grown to it exactly as in training (`fit_embeddings`), then the adapter
    is loaded. Unquantized (and `merge=True`, the default) the LoRA weights and the trained pause row are merged
    into the base weights (`merge_and_unload`), so eval runs at the base model's speed and the returned model is
    a plain transformers model; with `quantization='nf4'` the adapter stays a separate peft module (4-bit
    weights cannot take a merge without a requantisation error).
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from .models import default_device, load_model
    from .tokens import fit_embeddings, tokenizer_fingerprint

    ckpt_dir = Path(ckpt_dir)
    mpath = ckpt_dir / "manifest.json"
    if not mpath.exists():
        raise PausetuneError(f"{mpath}: missing (not a finished pausetune checkpoint)")
    manifest = read_json(mpath)
    for sub in ("adapter", "tokenizer"):
        if not (ckpt_dir / sub).is_dir():
            raise PausetuneError(f"{ckpt_dir / sub}: missing (not a finished pausetune checkpoint)")
    tok = AutoTokenizer.from_pretrained(ckpt_dir / "tokenizer")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tokenizer_fingerprint(tok) != manifest["shards"]["tokenizer_fingerprint"]:
        raise PausetuneError(f"{ckpt_dir}/tokenizer: fingerprint does not match the checkpoint manifest")
    device = device or default_device()
    base = load_model(model_dir, dtype, device, quantization)
    fit_embeddings(base, tok)
    model = PeftModel.from_pretrained(base, str(ckpt_dir / "adapter"), is_trainable=False)
    if quantization == "none" and merge:
        model = model.merge_and_unload()
    model.eval()
    return model, tok, manifest
