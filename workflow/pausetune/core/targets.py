"""The report's files: every table and figure a grid gets, each figure's path stem, and the folders publish copies
them to (one home, which the rules, the publish step and the figures stage share)."""
from __future__ import annotations

from . import layout
from .config import EvalConfig
from .design import VARIANTS
from .io import PausetuneError, check_ours

KINDS = ("heatmap", "delta", "length", "depth", "logprob", "logprob_delta", "attention_depth", "pause_depth",
         "attention_layer")
MAP_KINDS = ("heatmap", "delta", "logprob", "logprob_delta")  # one figure per variant
MECHANISM_PROFILES = ("attention_depth", "pause_depth", "attention_layer")
FORMATS = ("html", "png", "svg")
TABLE_FILES = ["cells.parquet", "summary.csv", "deltas.csv", "summary.json"]
SHARED_TABLES = ("summary.csv", "deltas.csv", "depth_profile.csv", "length_profile.csv", "measures.csv",
                 "measure_deltas.csv", "layer_attention.csv", "manifest.json")


def figure_stem(kind: str, model: str, task: str, variant: str | None = None, reference: str = "baseline",
                root: str = layout.FIGURES) -> str:
    if kind in ("heatmap", "logprob"):
        return layout.figure_stem(kind, f"{model}/{task}/{variant}", root)
    if kind in ("delta", "logprob_delta"):
        name = variant if reference == "baseline" else f"{variant}_vs_{reference}"
        return layout.figure_stem(kind, f"{model}/{task}/{name}", root)
    if kind in ("length", "depth") + MECHANISM_PROFILES:
        return layout.figure_stem(kind, f"{model}/{task}", root)
    raise PausetuneError(f"--kind {kind}: expected one of {KINDS}")


def report_targets(config: dict, tables: str = layout.TABLES, figures: str = layout.FIGURES) -> list[str]:
    """Every table and figure file of the configured grid (eval.models x eval.tasks x eval.variants)."""
    ev = EvalConfig.of(config)
    variants = [v for v in VARIANTS if v in ev.variants]
    stems = []
    for model in ev.models:
        for task in ev.tasks:
            stems += [figure_stem("heatmap", model, task, v, root=figures) for v in variants]
            if "baseline" in variants:
                stems += [figure_stem("delta", model, task, v, root=figures) for v in variants if v != "baseline"]
            if "pause-tuned" in variants and "plain-tuned" in variants:
                stems.append(figure_stem("delta", model, task, "pause-tuned", "plain-tuned", root=figures))
            stems += [figure_stem(k, model, task, root=figures) for k in ("length", "depth")]
            stems += mechanism_stems(ev.measure, variants, model, task, figures)
    return [layout.table(t, tables) for t in TABLE_FILES] + [f"{s}.{ext}" for s in stems for ext in FORMATS]


def mechanism_stems(measure: list[str], variants: list[str], model: str, task: str, figures: str) -> list[str]:
    """The mechanism figures of one model x task: log-prob maps with `logprob`, attention profiles with
    `attention` in eval.measure (default both); pause mass only where a paused variant is in the grid."""
    from .design import PAUSED

    stems = []
    if "logprob" in measure:
        stems += [figure_stem("logprob", model, task, v, root=figures) for v in variants]
        if "baseline" in variants:
            stems += [figure_stem("logprob_delta", model, task, v, root=figures) for v in variants if v != "baseline"]
        if "pause-tuned" in variants and "plain-tuned" in variants:
            stems.append(figure_stem("logprob_delta", model, task, "pause-tuned", "plain-tuned", root=figures))
    if "attention" in measure:
        kinds = ["attention_depth", "attention_layer"] + (["pause_depth"] if any(PAUSED[v] for v in variants) else [])
        stems += [figure_stem(k, model, task, root=figures) for k in kinds]
    return stems


def output_dirs(config: dict) -> dict[str, str]:
    """publish.figures_dir and tables_dir: config key -> folder."""
    pub = config["publish"]
    return {"publish.figures_dir": pub["figures_dir"], "publish.tables_dir": pub["tables_dir"]}


def check_output_dirs(config: dict) -> None:
    """Snakemake empties a folder output before its job runs (DVC too): refuse, while the DAG is built, a folder
    publish did not write (`figures_dir: docs` would empty docs/). One line naming the key."""
    for key, folder in output_dirs(config).items():
        try:
            check_ours(folder, "folder publish writes")
        except PausetuneError as e:
            raise PausetuneError(f"config key '{key}': {e}") from None
