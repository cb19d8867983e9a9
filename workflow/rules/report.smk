# Report stages: eval cells -> results/tables/ -> results/figures/ (+ `snakemake --report results/report.html`).
# Every figure is its own target (one job writes its .html, .png and .svg); all of them: report_targets(config)
# in pausetune.core.report.targets. Figures read only results/tables/cells.parquet, so they rerun whenever a cell changes.

report: "../report/workflow.rst"

from pausetune.core.report.targets import FIGURE_RULES


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
        seed_summary=layout.table("seed_summary.csv"),
        seed_deltas=layout.table("seed_deltas.csv"),
        variance_components=layout.table("variance_components.csv"),
        u_shape=layout.table("u_shape.csv"),
        distance=layout.table("distance.csv"),
        effective_length=layout.table("effective_length.csv"),
        manifest=layout.table("manifest.json"),
    params:
        cfg=lambda wc: cfg("seed", "report", "models"),  # models: each window (max_context), for u_shape's scopes
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


# One rule per figure family, each a named record of pausetune.core.report.targets.FIGURE_RULES (its name, --kind, the
# figure's path with wildcards, their constraints, its caption and category in the report). A loop of `rule:`;
# the shell line names no loop variable (Snakemake formats it again when the job runs, after the loop has ended):
# each rule's arguments are a param bound to its own record.
for _fig in FIGURE_RULES:

    rule:
        name:
            _fig.name
        input:
            cells=layout.table("cells.parquet"),
            code=code("figures"),
        output:
            html=f"{_fig.stem()}.html",
            png=report(
                f"{_fig.stem()}.png",
                caption=f"../report/{_fig.caption}.rst",
                category=_fig.category,
                subcategory="{model} / {task}",
                labels=_fig.labels,
            ),
            svg=f"{_fig.stem()}.svg",
        wildcard_constraints:
            model=NAME,
            task=NAME,
            **_fig.constraints,
        params:
            stem=lambda wc, output: output.png[: -len(".png")],
            # the config keys a figure's numbers depend on (the seeds figure: its bootstrap, as aggregate draws it)
            args=lambda wc, fig=_fig: fig.args(wc) + (["--config-json", cfg(*fig.config_keys)] if fig.config_keys
                                                      else []),
        conda:
            "../../envs/report.yaml"
        log:
            layout.log("figures", _fig.path),
        benchmark:
            layout.benchmark("figures", _fig.path),
        shell:
            "pausetune figures --cells-table {input.cells:q} {params.args:q} --output {params.stem:q} 2>&1 | tee {log:q}"
