"""Stage `shards`: essays split into paragraphs -> packed, tokenized training shards, data/shards/{model}/{variant}/.

The paper concatenates essays into long documents; so do we: essays (in a seeded order) joined by EOS,
encoded paragraph by paragraph (pausetune.core.tokens), packed into rows of exactly `seq_len` tokens. The
`pause` and `plain` variants hold the same essays in the same order; only the pause ids differ.
Essays are assigned to train / validation / haystack by a hash of (seed, id): stable when essays are
added, and with `holdout_haystack` the eval haystack never contains an essay the model was tuned on.
Output: an HF `DatasetDict` (Arrow, train + validation), the tokenizer the shards were made with (pause token
included: training loads exactly it), and manifest.json with token counts, ids and hashes.
"""
from __future__ import annotations

import random
from pathlib import Path

from ..core.config import ShardsConfig
from ..core.data.splits import essay_split
from ..core.design import TRAIN_VARIANTS
from ..core.io import PausetuneError, atomic_dir, read_parquet, sha256_file, write_json
from ..core.tokens import encode_paragraphs, separator_ids, setup_pause, tokenizer_fingerprint


def pack(streams: list[list[int]], seq_len: int, eos_id: int | None) -> tuple[list[list[int]], int]:
    """Concatenate token streams (EOS between them) and cut rows of exactly seq_len; return rows, dropped tail."""
    flat: list[int] = []
    for i, s in enumerate(streams):
        if i and eos_id is not None:
            flat.append(eos_id)
        flat.extend(s)
    n = len(flat) // seq_len
    return [flat[k * seq_len:(k + 1) * seq_len] for k in range(n)], len(flat) - n * seq_len


def build_shards(paragraph_files: list[str], model_dir: str, variant: str, config: dict, out_dir: str) -> dict:
    import datasets
    import pandas as pd

    from ..core.models import load_tokenizer, max_context

    if variant not in TRAIN_VARIANTS:
        raise PausetuneError(f"shards variant '{variant}': expected one of {TRAIN_VARIANTS}")
    cfg, seed = ShardsConfig.of(config), config["seed"]
    frames = []
    for path in paragraph_files:
        df = read_parquet(path, columns=["id", "sha256", "paragraphs"])
        df["id"] = Path(path).parent.name + "/" + df["id"].astype(str)  # ids unique across sources
        frames.append(df)
    essays = pd.concat(frames, ignore_index=True)
    window = max_context(model_dir)
    if cfg.seq_len > window:
        raise PausetuneError(f"config key 'shards.seq_len': {cfg.seq_len} exceeds the model's context window {window}")
    tok = load_tokenizer(model_dir)
    pause_ids = setup_pause(tok, config["pause"]) if variant == "pause" else None
    sep = separator_ids(tok)
    split = essay_split(list(essays["id"]), config["shards"], seed)
    by_id = {r.id: r for r in essays.itertuples(index=False)}

    def stream(essay_id: str) -> list[int]:
        return encode_paragraphs(tok, list(by_id[essay_id].paragraphs), pause_ids, sep)[0]

    rows, counts = {}, {}
    for name in ("train", "validation"):
        order = list(split[name])
        random.Random(f"{seed}:{name}").shuffle(order)
        packed, dropped = pack([stream(e) for e in order], cfg.seq_len, tok.eos_token_id)
        if name == "train" and not packed:
            raise PausetuneError(
                f"shards: training essays give fewer than seq_len={cfg.seq_len} tokens; lower shards.seq_len"
            )
        rows[name] = packed
        counts[name] = {"essays": len(order), "rows": len(packed), "tokens": len(packed) * cfg.seq_len,
                        "dropped_tail_tokens": dropped, "order": order}
    manifest = {
        "objective": "lm",
        "variant": variant,
        "seq_len": cfg.seq_len,
        "seed": seed,
        "paragraph_method": config["paragraphs"]["method"],
        "pause": dict(config["pause"]) if variant == "pause" else None,
        "pause_ids": pause_ids or [],
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "vocab_size": len(tok),
        "splits": counts,
        "holdout_haystack": cfg.holdout_haystack,
        "haystack_essays": split["haystack"],
        "train_essays": split["train"],
        "validation_essays": split["validation"],
        "sources": {p: sha256_file(p) for p in paragraph_files},
    }
    with atomic_dir(out_dir) as tmp:
        dd = datasets.DatasetDict({
            name: datasets.Dataset.from_dict(
                {"input_ids": rows[name]},
                features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))}))
            for name in rows
        })
        dd.save_to_disk(str(tmp / "dataset"))
        tok.save_pretrained(tmp / "tokenizer")
        write_json(tmp / "manifest.json", manifest)
    return manifest


def add_arguments(p) -> None:
    p.add_argument("--inputs", nargs="+", required=True, help="data/paragraphs/{source}/{method}.parquet files")
    p.add_argument("--model-dir", required=True, help="data/models/{model}")
    p.add_argument("--variant", required=True, choices=TRAIN_VARIANTS)
    p.add_argument("--output", required=True, help="data/shards/{model}/{variant}")


def main(args, config: dict) -> int:
    m = build_shards(args.inputs, args.model_dir, args.variant, config, args.output)
    s = m["splits"]
    print(f"shards {args.variant}: train {s['train']['rows']} x {m['seq_len']} tokens "
          f"({s['train']['essays']} essays), validation {s['validation']['rows']} rows, "
          f"{len(m['haystack_essays'])} essays held out for the haystack -> {args.output}")
    return 0
