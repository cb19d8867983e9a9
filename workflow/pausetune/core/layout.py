"""Every path the pipeline reads or writes, one template each, relative to the project.

The rules format these (Snakemake wildcards are the `{names}`), the CLI's defaults format them, and tests/test_dvc.py
holds dvc.yaml to the Snakefile's outputs, so a path is spelled here and nowhere else.
"""
from __future__ import annotations

import functools
import re

# data/: what the data stages build
RAW = "data/raw/{source}.parquet"
PARAGRAPHS = "data/paragraphs/{source}/{method}.parquet"
PARAGRAPHS_STATS = "data/paragraphs/{source}/{method}.stats.json"
MODELS = "data/models"
MODEL = "data/models/{model}"
SHARDS = "data/shards/{model}/{variant}"
EXAMPLES = "data/examples/{model}/{variant}/tseed{tseed}"  # retrieval examples: drawn per training seed

# results/: checkpoints, cells, tables, figures
RESULTS = "results"
# {tseed}: the training seed (train.seeds): LoRA init, data order and which training examples are drawn
CHECKPOINT = "results/checkpoints/{model}/{variant}/tseed{tseed}"
TRAIN_METRICS = "results/metrics/train/{model}/{variant}/tseed{tseed}.json"
TRAIN_LOSS = "results/metrics/train/{model}/{variant}/tseed{tseed}_loss.csv"
# A cell, under a results root: an untrained variant's (baseline, pause-prompt) once, a tuned variant's per
# training seed (core.design.TUNED), its adapter's seed one folder below the variant.
CELL = "eval/{model}/{variant}/{task}/seed{seed}/len{length}/depth{depth}.json"
TUNED_CELL = "eval/{model}/{variant}/tseed{tseed}/{task}/seed{seed}/len{length}/depth{depth}.json"
CELLS = "results/eval"
CELLS_CACHE = "results/.cells"  # finished cells by id: not an output, so a failed block keeps its work
TABLES = "results/tables"
FIGURES = "results/figures"
RUN_INFO = "results/run_info.json"  # the command that ran (Snakemake's onstart), for the page
CHECKS = ".snakemake/pausetune-checks"  # DAG-time checks that passed, by their inputs (core.checks.once)
CODE = ".snakemake/pausetune-code/{stage}.sha256"  # a stage's code fingerprint, a rule's code input (code_stamp)
BENCHMARKS = "benchmarks"

MANIFEST = "manifest.json"  # a folder output's declared file: written last, so it exists only when the rest does
PREPARED = "prepared.json"  # a prepared model's declared file


@functools.lru_cache(maxsize=None)
def name_pattern() -> str:
    """The pattern of every name formatted into these templates (the schema's $defs.name: its one home)."""
    from .config import load_schema

    return load_schema()["$defs"]["name"]["pattern"]


def check_name(value: str, what: str) -> str:
    """`value` if it is a name, else one line naming `what`: a name formatted into a template must not leave its
    folder (`../x`) or break a shell word, whichever route (Snakemake, DVC, the CLI) formats it."""
    from .config import PATTERN_MEANING
    from .io import PausetuneError, quote

    if not isinstance(value, str) or not re.match(name_pattern(), value):
        raise PausetuneError(f"{what}: expected {PATTERN_MEANING['name']}, got {quote(value)}")
    return value


CELL_ID = re.compile(r"^[0-9a-f]{64}$")  # a cell's id: the sha256 (hex) of its identity (stages/eval.py cell_id)


def cached_cell(cache_root, cell_id) -> str:
    """{cache_root}/{cell_id}.json, for an id of the computed form only: a cell file read from elsewhere must not
    name a path (`../../x`) the cache would write to."""
    from .io import PausetuneError, quote

    if not isinstance(cell_id, str) or not CELL_ID.match(cell_id):
        raise PausetuneError(f"cell_id {quote(cell_id)}: expected 64 hex digits (a sha256, as eval computes it)")
    return f"{cache_root}/{cell_id}.json"


def manifest(folder: str) -> str:
    return f"{folder}/{MANIFEST}"


def prepared(model: str = "{model}") -> str:
    if model != "{model}":
        check_name(model, "model")
    return f"{MODEL.format(model=model)}/{PREPARED}"


def train_data(model: str, variant: str, objective: str, tseed="{tseed}") -> str:
    """What a checkpoint trains on: retrieval examples of its training seed (train.objective retrieval) or LM
    shards (lm: the same shards for every seed, which sets only the init and the data order there)."""
    check_name(model, "model")
    return EXAMPLES.format(model=model, variant=variant, tseed=tseed) if objective == "retrieval" else \
        SHARDS.format(model=model, variant=variant)


def checkpoint(model: str, variant: str, tseed) -> str:
    check_name(model, "model")
    return CHECKPOINT.format(model=model, variant=variant, tseed=int(tseed))


def timing(cell_path: str, root: str = RESULTS) -> str:
    """{root}/eval/<cell> -> {root}/timing/<cell>: a run's measurements, beside the results, never in them."""
    from pathlib import Path

    return str(Path(root) / "timing" / Path(cell_path).relative_to(Path(root) / "eval"))


def table(name: str, root: str = TABLES) -> str:
    return f"{root}/{name}"


def cell(root: str = RESULTS, tuned: bool = False) -> str:
    """The cell template (a tuned variant's: TUNED_CELL) under a results root ('' for none)."""
    template = TUNED_CELL if tuned else CELL
    return f"{root.rstrip('/')}/{template}" if root else template


def log(step: str, name: str) -> str:
    """logs/{step}/{name}.log: where a rule's job writes its log."""
    return f"logs/{step}/{name}.log"


def benchmark(step: str, name: str) -> str:
    """benchmarks/{step}/{name}.tsv: Snakemake's per-job time and memory (the page reads them)."""
    return f"{BENCHMARKS}/{step}/{name}.tsv"


def figure_stem(kind: str, name: str, root: str = FIGURES) -> str:
    """results/figures/{kind}/{name}: one figure, written as .html, .png and .svg beside each other."""
    return f"{root}/{kind}/{name}"
