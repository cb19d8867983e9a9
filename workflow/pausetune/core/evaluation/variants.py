"""An eval variant's model: the base model, the base with a pause token, with a positional method hooked in, or
with a tuned checkpoint merged. Here, not beside the checkpoints, so training's code closure stays free of eval-only
methods (editing Ms-PoE must not retrain anything)."""
from __future__ import annotations

from ..design import CHECKPOINT, POSITIONAL, uses_pause
from ..io import PausetuneError
from ..models import load_model, load_tokenizer
from ..positional import apply_ms_poe
from ..tokens import fit_embeddings, setup_pause
from ..training.checkpoints import load_checkpoint


def load_variant(variant: str, config: dict, model: str, model_dir, checkpoint, dtype: str, device: str):
    """An eval variant's model and tokenizer: the base (`baseline`; `pause-prompt` and `pause-before-answer` with the
    pause token added, its embedding row the exact mean; `ms-poe` with its position scaling hooked in), or the base
    with the variant's checkpoint merged (the tuned variants).
    Returns (model, tokenizer, pause_ids or None); the checkpoint was checked when the block was planned
    (check_checkpoint, checkpoint_adapter_hash)."""
    if variant in CHECKPOINT:
        if not checkpoint:
            raise PausetuneError(f"eval {variant}: --checkpoint results/checkpoints/{model}/{CHECKPOINT[variant]} "
                                 "is required")
        net, tok, _ = load_checkpoint(model_dir, checkpoint, dtype=dtype, device=device)
    else:
        tok = load_tokenizer(model_dir)
        net = load_model(model_dir, dtype, device)
    pause_ids = None
    if uses_pause(variant):
        pause_ids = setup_pause(tok, config["pause"])
        fit_embeddings(net, tok)  # no-op unless the tokenizer grew (an untuned variant, special mode)
    if variant in POSITIONAL:
        apply_ms_poe(net, config["eval"]["ms_poe"])
    if net.get_input_embeddings().weight.shape[0] < len(tok):
        raise PausetuneError(f"model '{model}': embedding has fewer rows than the tokenizer ({len(tok)})")
    return net, tok, pause_ids
