"""The study's vocabulary, one home for each name: variants, what each one means, comparisons, cell keys, tables."""
from __future__ import annotations

import math

from .io import PausetuneError

# The 2x3 design: weights (none | pause-tuned | plain-tuned) x haystack (plain | paused). The crossed variants
# (a tuned adapter on the other arm's haystack) tell the weights from the markers in the input. Reference arms:
# pause-before-answer, the base model given eval.answer_pauses markers after the question and nothing else (the
# cheapest "time to think" control, inference only); ms-poe, the base model with Ms-PoE's per-head position
# scaling (eval.ms_poe; core.positional), the training-free long-context method the paper names.
DESIGN = ("baseline", "pause-prompt", "pause-tuned", "plain-tuned", "pause-tuned-on-plain", "plain-tuned-on-paused")
REFERENCE_ARMS = ("pause-before-answer", "ms-poe")  # switched on in eval.variants (Snakemake); dvc.yaml's matrix is DESIGN
VARIANTS = DESIGN + REFERENCE_ARMS


# does the variant's haystack carry pause markers after each paragraph?
PAUSED = {"baseline": False, "pause-prompt": True, "pause-tuned": True, "plain-tuned": False,
          "pause-tuned-on-plain": False, "plain-tuned-on-paused": True, "pause-before-answer": False, "ms-poe": False}
ANSWER_PAUSES = ("pause-before-answer",)  # variants with eval.answer_pauses markers right after the question
POSITIONAL = ("ms-poe",)  # variants whose base model gets eval.ms_poe's position scaling


def uses_pause(variant: str) -> bool:
    """Does the variant's prompt hold a pause marker anywhere (so its tokenizer needs the token and its cells the
    pause config)?"""
    return PAUSED[variant] or variant in ANSWER_PAUSES


# tuned variant -> the checkpoint variant whose weights it loads
CHECKPOINT = {"pause-tuned": "pause", "plain-tuned": "plain", "pause-tuned-on-plain": "pause",
              "plain-tuned-on-paused": "plain"}
TUNED = tuple(v for v in VARIANTS if v in CHECKPOINT)  # the variants with one cell set per training seed
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


# A cell's coordinates. train_seed: the training run of a tuned variant's adapter (-1 for the untrained variants,
# which do not depend on it: their cells pair with every run's).
KEY = ["model", "variant", "train_seed", "task", "seed", "length", "depth"]
UNTRAINED = -1


MATCH = ["model", "task", "seed", "length", "depth"]  # what pairs two variants' cells (and train_seed, both tuned)


# (variant, reference): every variant against baseline, then the tuning controls, then the crossed design's
# contrasts: weights at a fixed haystack, haystack at fixed weights.
COMPARISONS = [(v, "baseline") for v in VARIANTS if v != "baseline"] + [
    ("pause-tuned", "plain-tuned"),
    ("pause-tuned", "pause-prompt"),
    ("pause-tuned", "plain-tuned-on-paused"),        # weights, paused haystack
    ("pause-tuned-on-plain", "plain-tuned"),         # weights, plain haystack
    ("pause-tuned", "pause-tuned-on-plain"),         # haystack, pause weights
    ("plain-tuned-on-paused", "plain-tuned"),        # haystack, plain weights
    ("pause-tuned", "pause-before-answer"),          # trained pauses against inference-only ones
    ("pause-tuned", "ms-poe"),                       # pause-tuning against a training-free positional method
]


# The primary endpoint where config report.primary is null (core.report.tables.primary_of; marked where the cells
# have it): the issue-#26 question.
DEFAULT_PRIMARY = {"variant": "pause-tuned", "reference": "plain-tuned", "task": "bank", "lengths": None}


TABLES = ["cells.parquet", "summary.csv", "deltas.csv", "summary.json", "depth_profile.csv", "length_profile.csv",
          "measures.csv", "measure_deltas.csv", "layer_attention.csv", "seed_summary.csv", "seed_deltas.csv",
          "variance_components.csv", "u_shape.csv", "distance.csv",
          "effective_length.csv", "manifest.json"]


def fmt_tokens(n: float) -> str:
    """1000 -> '1K', 1500 -> '1.5K', 128000 -> '128K', 512 -> '512'."""
    n = float(n)
    if n >= 1000:
        return f"{n / 1000:.3g}K"
    return f"{n:.3g}"
