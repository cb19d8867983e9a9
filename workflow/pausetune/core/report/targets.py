"""The report's files: every table and figure a grid gets, the rule that draws each family of figures, and the
folders publish copies them to (one home, which the rules, the publish step and the figures stage share)."""
from __future__ import annotations

from dataclasses import dataclass

from .. import layout
from ..config import EvalConfig
from ..design import COMPARISONS, TUNED, VARIANTS
from ..io import PausetuneError, check_ours

KINDS = ("heatmap", "delta", "length", "depth", "logprob", "logprob_delta", "attention_depth", "pause_depth",
         "attention_layer", "seeds", "distance")
MAP_KINDS = ("heatmap", "delta", "logprob", "logprob_delta")  # one figure per variant
MECHANISM_PROFILES = ("attention_depth", "pause_depth", "attention_layer")
FORMATS = ("html", "png", "svg")
TABLE_FILES = ["cells.parquet", "summary.csv", "deltas.csv", "summary.json"]
SHARED_TABLES = ("summary.csv", "deltas.csv", "depth_profile.csv", "length_profile.csv", "measures.csv",
                 "measure_deltas.csv", "layer_attention.csv", "seed_summary.csv", "seed_deltas.csv",
                 "variance_components.csv", "u_shape.csv", "distance.csv",
                 "effective_length.csv", "manifest.json")
ANY_VARIANT = "|".join(VARIANTS)
NOT_BASELINE = "|".join(v for v in VARIANTS if v != "baseline")


@dataclass(frozen=True)
class FigureRule:
    """One family of figures and the Snakemake rule that draws it (report.smk makes one rule per record): each
    figure is {kind}/{figure} under results/figures, written as .html, .png and .svg by `pausetune figures`."""

    name: str  # the rule's name
    kind: str  # --kind: a kind, or a {wildcard} whose constraint lists the kinds
    figure: str  # the figure's path under its kind's folder, with {wildcards}; --variant is passed where it has one
    constraints: dict  # wildcard -> regex, besides {model} and {task} (any name)
    caption: str  # workflow/report/{caption}.rst: the figure's text in `snakemake --report`
    category: str  # its section there
    reference: str | None = None  # --reference: a variant, "{reference}" (a wildcard), or None (not passed)
    # config keys the figure reads (to pass as --config-json, and rerun on): the seeds figure's bootstrap is
    # deltas.csv's only with the aggregate stage's seed and report.bootstrap / report.primary
    config_keys: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"{self.kind}/{self.figure}"

    def stem(self, root: str = layout.FIGURES) -> str:
        return layout.figure_stem(self.kind, self.figure, root)

    @property
    def labels(self) -> dict:
        """The figure's labels in `snakemake --report`: model, task, and what tells its figures apart."""
        out = {"model": "{model}", "task": "{task}"}
        if self.kind.startswith("{"):
            out["figure"] = self.kind
        if "{variant}" in self.figure:
            out["variant"] = "{variant}"
        if self.reference:
            out["reference"] = self.reference
        return out

    def args(self, wildcards) -> list[str]:
        """The `pausetune figures` arguments of one job ({name}: that wildcard's value)."""
        value = lambda x: getattr(wildcards, x[1:-1]) if x.startswith("{") else x
        args = ["--kind", value(self.kind), "--model", wildcards.model, "--task", wildcards.task]
        args += ["--variant", wildcards.variant] if "{variant}" in self.figure else []
        args += ["--reference", value(self.reference)] if self.reference else []
        return args

    def draws(self, kind: str, reference: str) -> bool:
        """Is a figure of `kind` against `reference` one of this rule's? (the first rule that says so names it)"""
        kinds = self.constraints[self.kind[1:-1]].split("|") if self.kind.startswith("{") else [self.kind]
        return kind in kinds and self.reference in (None, reference, "{reference}")


FIGURE_RULES = (
    FigureRule("figure_heatmap", "heatmap", "{model}/{task}/{variant}", {"variant": ANY_VARIANT},
               caption="heatmap", category="NIAH heatmaps"),
    FigureRule("figure_delta", "delta", "{model}/{task}/{variant}", {"variant": NOT_BASELINE},
               caption="delta", category="Delta heatmaps (vs baseline)", reference="baseline"),
    FigureRule("figure_delta_vs", "delta", "{model}/{task}/{variant}_vs_{reference}",
               {"variant": ANY_VARIANT, "reference": ANY_VARIANT},
               caption="delta", category="Delta heatmaps (other references)", reference="{reference}"),
    FigureRule("figure_profile", "{profile}", "{model}/{task}", {"profile": "length|depth"},
               caption="profile", category="Score vs length and depth"),
    FigureRule("figure_logprob", "logprob", "{model}/{task}/{variant}", {"variant": ANY_VARIANT},
               caption="mechanism", category="Answer log-prob maps"),
    FigureRule("figure_logprob_delta", "logprob_delta", "{model}/{task}/{variant}", {"variant": NOT_BASELINE},
               caption="mechanism", category="Answer log-prob delta maps", reference="baseline"),
    FigureRule("figure_logprob_delta_vs", "logprob_delta", "{model}/{task}/{variant}_vs_{reference}",
               {"variant": ANY_VARIANT, "reference": ANY_VARIANT},
               caption="mechanism", category="Answer log-prob delta maps", reference="{reference}"),
    FigureRule("figure_mechanism", "{mechanism}", "{model}/{task}", {"mechanism": "|".join(sorted(MECHANISM_PROFILES))},
               caption="mechanism", category="Attention on the needle and the pauses"),
    FigureRule("figure_seeds", "seeds", "{model}/{task}", {}, caption="seeds", category="Training runs",
               config_keys=("seed", "report")),
    FigureRule("figure_distance", "distance", "{model}/{task}", {}, caption="distance",
               category="Distance to the question", config_keys=("seed", "report")),
)


def figure_stem(kind: str, model: str, task: str, variant: str | None = None, reference: str = "baseline",
                root: str = layout.FIGURES) -> str:
    """The path, without extension, of one figure: its rule's, with these values."""
    for rule in FIGURE_RULES:
        if rule.draws(kind, reference):
            name = rule.figure.format(model=model, task=task, variant=variant, reference=reference)
            return layout.figure_stem(kind, name, root)
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
            stems += [figure_stem(k, model, task, root=figures) for k in ("length", "depth", "distance")]
            stems += mechanism_stems(ev.measure, variants, model, task, figures)
            if tuned_contrast(variants):
                stems.append(figure_stem("seeds", model, task, root=figures))
    return [layout.table(t, tables) for t in TABLE_FILES] + [f"{s}.{ext}" for s in stems for ext in FORMATS]


def tuned_contrast(variants) -> bool:
    """Can the grid's variants make a contrast with a tuned arm (the per-seed dot plot's rows)?"""
    return any((v in TUNED or r in TUNED) and v in variants and r in variants for v, r in COMPARISONS)


def mechanism_stems(measure: list[str], variants: list[str], model: str, task: str, figures: str) -> list[str]:
    """The mechanism figures of one model x task: log-prob maps with `logprob`, attention profiles with
    `attention` in eval.measure (default both); pause mass only where a paused variant is in the grid."""
    from ..design import PAUSED

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
