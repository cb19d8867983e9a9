"""The pause token and paragraph-wise encoding, shared by training shards and eval haystacks.

Both sides build token streams the same way: each paragraph encoded on its own with
`add_special_tokens=False` (no BOS inside the context), then the pause ids (paused variants only),
then the separator ids. So a paused stream with its pause ids removed is exactly the plain stream, and the
only difference between the `pause` and `plain` variants is the marker itself.

Pause modes (config `pause.mode`):
- `special`: `<PAUSE>` becomes a new additional special token: one id, never split, never produced by
  ordinary text; its embedding row is new (mean-initialised) and training must learn it. The fairest
  reading of the paper, and the only mode where the marker carries no prior meaning.
- `text`: the literal string, tokenised normally (several ordinary tokens, e.g. `<`, `P`, `AUSE`, `>`): no
  vocabulary change and no new embedding, works with any frozen model, but the marker has prior meaning
  and costs several positions per paragraph.
- `reserved`: reuse a special token the tokenizer already has but never uses (Llama-3's
  `<|reserved_special_token_0|>`): one id and no resize, but its trained embedding is arbitrary (often near
  zero) and it exists only in some vocabularies.
"""
from __future__ import annotations

import hashlib
import json

from .config import PauseConfig
from .io import PausetuneError

PARAGRAPH_SEP = "\n\n"


def pause_token(pause: dict) -> str | None:
    """The one vocabulary token the marker is (`special`: pause.token, `reserved`: pause.reserved_token), or None
    (`text`: the marker is ordinary text, several tokens)."""
    cfg = PauseConfig.from_dict(pause)
    return {"special": cfg.token, "reserved": cfg.reserved_token}.get(cfg.mode)


def check_pause_settings(made_with: dict | None, config: dict, path, remedy: str) -> None:
    """One line where an input was made with other pause settings than the config's (shards, examples, a
    checkpoint): the markers a haystack or a training row gets must be those the weights learn or learnt."""
    made = PauseConfig.from_dict(made_with) if made_with else None
    asked = PauseConfig.of(config)
    if made != asked:
        was = made.to_dict() if made else "none recorded"
        raise PausetuneError(f"{path}: made with pause {was}, config 'pause' is {asked.to_dict()}: {remedy}")


def setup_pause(tokenizer, pause: dict) -> list[int]:
    """Make the tokenizer know the pause marker (mutates it in special mode); return the marker's ids."""
    cfg = PauseConfig.from_dict(pause)
    token = pause_token(pause)
    if cfg.mode == "special":
        if token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
        return [tokenizer.convert_tokens_to_ids(token)]
    if cfg.mode == "text":
        return tokenizer.encode(" " + cfg.token, add_special_tokens=False)
    if not token or token not in tokenizer.get_vocab():
        raise PausetuneError(f"config key 'pause.reserved_token': '{token}' is not a token of this tokenizer")
    return [tokenizer.convert_tokens_to_ids(token)]


def encode_paragraphs(tokenizer, paragraphs: list[str], pause_ids: list[int] | None,
                      sep_ids: list[int]) -> tuple[list[int], list[int]]:
    """Token ids of one essay, and the index just past each paragraph's last text token."""
    ids: list[int] = []
    ends: list[int] = []
    encoded = tokenizer(list(paragraphs), add_special_tokens=False)["input_ids"] if paragraphs else []
    for i, para_ids in enumerate(encoded):
        if i:
            ids.extend(sep_ids)
        ids.extend(para_ids)
        ends.append(len(ids))
        if pause_ids:
            ids.extend(pause_ids)
    return ids, ends


def separator_ids(tokenizer) -> list[int]:
    return tokenizer.encode(PARAGRAPH_SEP, add_special_tokens=False)


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the vocabulary and added tokens: shards made with another tokenizer are caught before training."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def fit_embeddings(model, tokenizer) -> None:
    """Grow the embedding (and head) to the tokenizer; new rows start at the exact mean of the old ones.

    transformers' `mean_resizing` samples new rows from a Gaussian, which would make the pause-prompt baseline
    depend on the global RNG; the plain mean is deterministic and is what the paper's recipe implies.
    """
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            w = layer.weight
            w[old:] = w[:old].mean(dim=0, keepdim=True)
