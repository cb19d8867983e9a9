"""The study's vocabulary, one home for each name: variants, what each one means, comparisons, cell keys, tables."""
from __future__ import annotations

import math

from .io import PausetuneError

VARIANTS = ("baseline", "pause-prompt", "pause-tuned", "plain-tuned")


PAUSED = {"baseline": False, "pause-prompt": True, "pause-tuned": True, "plain-tuned": False}


CHECKPOINT = {"pause-tuned": "pause", "plain-tuned": "plain"}  # tuned variant -> checkpoint variant
TRAIN_VARIANTS = ("pause", "plain")  # the two kinds of shards and checkpoints


KINDS = ("single", "multi", "multikey", "multivalue", "multiquery", "variable_tracking")


MEASURES = ("logprob", "attention")  # eval.measure: what a cell measures beside its greedy answer


BLOCKS = ("cell", "length", "seed")


def format_depth(depth: float) -> str:
    d = float(depth)
    return str(int(d)) if d.is_integer() else repr(d)


def parse_depth(text: str) -> float:
    try:
        d = float(text)
    except ValueError:
        raise PausetuneError(f"depth '{text}': not a number") from None
    if not 0 <= d <= 100 or math.isnan(d):
        raise PausetuneError(f"config key 'eval.depths': depth {text} is outside 0-100")
    return d


KEY = ["model", "variant", "task", "seed", "length", "depth"]


MATCH = ["model", "task", "seed", "length", "depth"]


# (variant, reference): every variant against baseline, then the tuning controls.
COMPARISONS = [(v, "baseline") for v in VARIANTS if v != "baseline"] + [
    ("pause-tuned", "plain-tuned"),
    ("pause-tuned", "pause-prompt"),
]


TABLES = ["cells.parquet", "summary.csv", "deltas.csv", "summary.json", "depth_profile.csv", "length_profile.csv",
          "measures.csv", "measure_deltas.csv", "layer_attention.csv", "manifest.json"]


def fmt_tokens(n: float) -> str:
    """1000 -> '1K', 1500 -> '1.5K', 128000 -> '128K', 512 -> '512'."""
    n = float(n)
    if n >= 1000:
        return f"{n / 1000:.3g}K"
    return f"{n:.3g}"
