"""Checkpoints (a trained adapter + tokenizer + manifest): hashes, training metrics and loading for evaluation."""
from __future__ import annotations

import json
from pathlib import Path

from ..io import PausetuneError, read_json, sha256_file


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


def training_metrics(checkpoint_dir: str | Path) -> tuple[dict, list[dict]]:
    """(flat metrics, loss curve rows) of a finished checkpoint, for `dvc metrics` and `dvc plots`."""
    ck = Path(checkpoint_dir)
    m = read_json(ck / "manifest.json")
    name = f"{m.get('model')}/{m.get('variant')}"
    metrics = {k: (round(m[k], 6) if isinstance(m.get(k), float) else m.get(k))
               for k in ("final_train_loss", "final_val_loss", "first_train_loss", "steps", "tokens_seen",
                         "train_time_s", "trainable_params")}
    curve = []
    for line in (ck / "train_log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            curve.append({"panel": name, "series": "train", "step": r["step"], "loss": round(r["loss"], 6)})
        elif "val_loss" in r:
            curve.append({"panel": name, "series": "validation", "step": r["step"], "loss": round(r["val_loss"], 6)})
    return metrics, curve


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

    from ..kernels import default_device
    from ..models import load_model
    from ..tokens import fit_embeddings, tokenizer_fingerprint

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
    data = manifest["examples" if manifest.get("objective") == "retrieval" else "shards"]  # what it trained on
    if tokenizer_fingerprint(tok) != data["tokenizer_fingerprint"]:
        raise PausetuneError(f"{ckpt_dir}/tokenizer: fingerprint does not match the checkpoint manifest")
    device = device or default_device()
    base = load_model(model_dir, dtype, device, quantization)
    fit_embeddings(base, tok)
    model = PeftModel.from_pretrained(base, str(ckpt_dir / "adapter"), is_trainable=False)
    if quantization == "none" and merge:
        model = model.merge_and_unload()
    model.eval()
    return model, tok, manifest


def check_checkpoint(checkpoint, variant: str, config: dict, train_seed: int | None = None) -> dict:
    """A tuned variant's checkpoint, before anything loads: its manifest's variant is the one the eval variant needs,
    and (paused variants) its pause settings are the config's: the markers the haystack gets must be those the
    adapter was trained with. One line otherwise; returns the manifest."""
    from ..design import CHECKPOINT, PAUSED
    from ..tokens import check_pause_settings

    mf = read_json(Path(checkpoint) / "manifest.json")
    if mf.get("variant") != CHECKPOINT[variant]:
        raise PausetuneError(f"{checkpoint}: a '{mf.get('variant')}' checkpoint, variant {variant} needs "
                             f"'{CHECKPOINT[variant]}'")
    made = mf.get("train_seed", mf.get("seed"))
    if train_seed is not None and made is not None and int(made) != int(train_seed):
        raise PausetuneError(f"{checkpoint}: trained with training seed {made}, these cells are of training seed "
                             f"{train_seed} (--train-seed)")
    if PAUSED[variant]:
        check_pause_settings(mf.get("pause"), config, checkpoint, "retrain it, or set config 'pause' back")
    return mf
