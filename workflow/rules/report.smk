# Report stages: eval cells -> results/tables/ -> results/figures/ (+ `snakemake --report results/report.html`).
# Every figure is its own target (one job writes its .html, .png and .svg); all of them: report_targets(config)
# in pausetune.figures. Figures read only results/tables/cells.parquet, so they rerun whenever a cell changes.

report: "../report/workflow.rst"

from pausetune.core.design import VARIANTS as _VARIANTS
from pausetune.core.targets import MECHANISM_PROFILES

FIG_VARIANTS = "|".join(_VARIANTS)
VS_BASELINE = "|".join(v for v in _VARIANTS if v != "baseline")


rule aggregate:
    input:
        # eval_targets(config): the cell paths of the configured grid (defined with the eval rules)
        cells=lambda wc: eval_targets(config),
        code=code("aggregate"),
    output:
        cells=layout.table("cells.parquet"),
        summary=report(layout.table("summary.csv"), caption="../report/summary.rst", category="Tables"),
        deltas=report(layout.table("deltas.csv"), caption="../report/deltas.rst", category="Tables"),
        metrics=layout.table("summary.json"),
        depth_profile=layout.table("depth_profile.csv"),
        length_profile=layout.table("length_profile.csv"),
        measures=layout.table("measures.csv"),
        measure_deltas=layout.table("measure_deltas.csv"),
        layer_attention=layout.table("layer_attention.csv"),
        manifest=layout.table("manifest.json"),
    params:
        cfg=lambda wc: cfg("seed", "report"),
        cells_list="logs/aggregate/cells.txt",
    conda:
        "../../envs/report.yaml"
    log:
        layout.log("aggregate", "aggregate"),
    benchmark:
        layout.benchmark("aggregate", "aggregate"),
    # The cell list goes through a file written by bash's printf builtin (no exec, so no ARG_MAX): a paper-size
    # grid has tens of thousands of paths; Snakemake itself moves a command that long into a script file.
    shell:
        "printf '%s\\n' {input.cells:q} > {params.cells_list:q} &&"
        " pausetune aggregate --config-json {params.cfg:q} --cells-from {params.cells_list:q}"
        f" --out-dir {layout.TABLES} 2>&1 | tee {{log:q}}"


# One rule per figure family; each target is a figure stem written as .html, .png and .svg. The stems are
# pausetune.core.targets.figure_stem's (layout.FIGURES/{kind}/...), the mechanism's only where eval.measure asks.
_MVT = {"model": "{model}", "task": "{task}"}
FIGURE_RULES = [
    # name, stem under results/figures, caption, category, labels, wildcard constraints,
    # --kind (a name or a {wildcard}), whether --variant is passed, --reference (None, a name or {reference})
    ("figure_heatmap", "heatmap/{model}/{task}/{variant}", "heatmap", "NIAH heatmaps",
     {**_MVT, "variant": "{variant}"}, {"variant": FIG_VARIANTS}, "heatmap", True, None),
    ("figure_delta", "delta/{model}/{task}/{variant}", "delta", "Delta heatmaps (vs baseline)",
     {**_MVT, "variant": "{variant}", "reference": "baseline"}, {"variant": VS_BASELINE}, "delta", True, "baseline"),
    ("figure_delta_vs", "delta/{model}/{task}/{variant}_vs_{reference}", "delta", "Delta heatmaps (other references)",
     {**_MVT, "variant": "{variant}", "reference": "{reference}"}, {"variant": FIG_VARIANTS, "reference": FIG_VARIANTS},
     "delta", True, "{reference}"),
    ("figure_profile", "{profile}/{model}/{task}", "profile", "Score vs length and depth",
     {**_MVT, "figure": "{profile}"}, {"profile": "length|depth"}, "{profile}", False, None),
    ("figure_logprob", "logprob/{model}/{task}/{variant}", "mechanism", "Answer log-prob maps",
     {**_MVT, "variant": "{variant}"}, {"variant": FIG_VARIANTS}, "logprob", True, None),
    ("figure_logprob_delta", "logprob_delta/{model}/{task}/{variant}", "mechanism", "Answer log-prob delta maps",
     {**_MVT, "variant": "{variant}", "reference": "baseline"}, {"variant": VS_BASELINE}, "logprob_delta", True,
     "baseline"),
    ("figure_logprob_delta_vs", "logprob_delta/{model}/{task}/{variant}_vs_{reference}", "mechanism",
     "Answer log-prob delta maps", {**_MVT, "variant": "{variant}", "reference": "{reference}"},
     {"variant": FIG_VARIANTS, "reference": FIG_VARIANTS}, "logprob_delta", True, "{reference}"),
    ("figure_mechanism", "{mechanism}/{model}/{task}", "mechanism", "Attention on the needle and the pauses",
     {**_MVT, "figure": "{mechanism}"}, {"mechanism": "|".join(sorted(MECHANISM_PROFILES))}, "{mechanism}", False,
     None),
]


# A loop of `rule:`; the shell line names no loop variable (Snakemake formats it again when the job runs, after
# the loop has ended): each rule's arguments are a param bound to its own spec.
for _name, _stem, _caption, _category, _labels, _constraints, _kind, _variant, _reference in FIGURE_RULES:

    rule:
        name:
            _name
        input:
            cells=layout.table("cells.parquet"),
            code=code("figures"),
        output:
            html=f"{layout.FIGURES}/{_stem}.html",
            png=report(
                f"{layout.FIGURES}/{_stem}.png",
                caption=f"../report/{_caption}.rst",
                category=_category,
                subcategory="{model} / {task}",
                labels=_labels,
            ),
            svg=f"{layout.FIGURES}/{_stem}.svg",
        wildcard_constraints:
            model=NAME,
            task=NAME,
            **_constraints,
        params:
            stem=lambda wc, output: output.png[: -len(".png")],
            args=lambda wc, spec=(_kind, _variant, _reference): figure_args(wc, *spec),
        conda:
            "../../envs/report.yaml"
        log:
            layout.log("figures", _stem),
        benchmark:
            layout.benchmark("figures", _stem),
        shell:
            "pausetune figures --cells-table {input.cells:q} {params.args:q} --output {params.stem:q} 2>&1 | tee {log:q}"
