# Report stages: eval cells -> results/tables/ -> results/figures/ (+ `snakemake --report results/report.html`).
# Every figure is its own target (one job writes its .html, .png and .svg); all of them: report_targets(config)
# in pausetune.figures. Figures read only results/tables/cells.parquet, so they rerun whenever a cell changes.

report: "../report/workflow.rst"

FIG_VARIANTS = "baseline|pause-prompt|pause-tuned|plain-tuned"


rule aggregate:
    input:
        # eval_targets(config): the cell paths of the configured grid (defined with the eval rules)
        cells=lambda wc: eval_targets(config),
        code=code("aggregate"),
    output:
        cells="results/tables/cells.parquet",
        summary=report("results/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        deltas=report("results/tables/deltas.csv", caption="../report/deltas.rst", category="Tables"),
        metrics="results/tables/summary.json",
        depth_profile="results/tables/depth_profile.csv",
        length_profile="results/tables/length_profile.csv",
        measures="results/tables/measures.csv",
        measure_deltas="results/tables/measure_deltas.csv",
        layer_attention="results/tables/layer_attention.csv",
        manifest="results/tables/manifest.json",
    params:
        cfg=lambda wc: cfg("seed", "report"),
        cells_list="logs/aggregate/cells.txt",
    conda:
        "../../envs/report.yaml"
    log:
        "logs/aggregate/aggregate.log",
    benchmark:
        "benchmarks/aggregate/aggregate.tsv",
    # The cell list goes through a file written by bash's printf builtin (no exec, so no ARG_MAX): a paper-size
    # grid has tens of thousands of paths; Snakemake itself moves a command that long into a script file.
    shell:
        "printf '%s\\n' {input.cells:q} > {params.cells_list:q} &&"
        " pausetune aggregate --config-json {params.cfg:q} --cells-from {params.cells_list:q}"
        " --out-dir results/tables 2>&1 | tee {log}"


rule figure_heatmap:
    input:
        cells="results/tables/cells.parquet",
        code=code("figures"),
    output:
        html="results/figures/heatmap/{model}/{task}/{variant}.html",
        png=report(
            "results/figures/heatmap/{model}/{task}/{variant}.png",
            caption="../report/heatmap.rst",
            category="NIAH heatmaps",
            subcategory="{model} / {task}",
            labels={"model": "{model}", "task": "{task}", "variant": "{variant}"},
        ),
        svg="results/figures/heatmap/{model}/{task}/{variant}.svg",
    wildcard_constraints:
        model="[^/]+",
        task="[^/]+",
        variant=FIG_VARIANTS,
    params:
        stem=lambda wc, output: output.png[: -len(".png")],
    conda:
        "../../envs/report.yaml"
    log:
        "logs/figures/heatmap/{model}/{task}/{variant}.log",
    benchmark:
        "benchmarks/figures/heatmap/{model}/{task}/{variant}.tsv",
    shell:
        "pausetune figures --cells-table {input.cells} --kind heatmap --model {wildcards.model:q} --task {wildcards.task:q}"
        " --variant {wildcards.variant} --output {params.stem:q} 2>&1 | tee {log}"


rule figure_delta:
    input:
        cells="results/tables/cells.parquet",
        code=code("figures"),
    output:
        html="results/figures/delta/{model}/{task}/{variant}.html",
        png=report(
            "results/figures/delta/{model}/{task}/{variant}.png",
            caption="../report/delta.rst",
            category="Delta heatmaps (vs baseline)",
            subcategory="{model} / {task}",
            labels={"model": "{model}", "task": "{task}", "variant": "{variant}", "reference": "baseline"},
        ),
        svg="results/figures/delta/{model}/{task}/{variant}.svg",
    wildcard_constraints:
        model="[^/]+",
        task="[^/]+",
        variant="pause-prompt|pause-tuned|plain-tuned",
    params:
        stem=lambda wc, output: output.png[: -len(".png")],
    conda:
        "../../envs/report.yaml"
    log:
        "logs/figures/delta/{model}/{task}/{variant}.log",
    benchmark:
        "benchmarks/figures/delta/{model}/{task}/{variant}.tsv",
    shell:
        "pausetune figures --cells-table {input.cells} --kind delta --model {wildcards.model:q} --task {wildcards.task:q}"
        " --variant {wildcards.variant} --reference baseline --output {params.stem:q} 2>&1 | tee {log}"


rule figure_delta_vs:
    input:
        cells="results/tables/cells.parquet",
        code=code("figures"),
    output:
        html="results/figures/delta/{model}/{task}/{variant}_vs_{reference}.html",
        png=report(
            "results/figures/delta/{model}/{task}/{variant}_vs_{reference}.png",
            caption="../report/delta.rst",
            category="Delta heatmaps (other references)",
            subcategory="{model} / {task}",
            labels={"model": "{model}", "task": "{task}", "variant": "{variant}", "reference": "{reference}"},
        ),
        svg="results/figures/delta/{model}/{task}/{variant}_vs_{reference}.svg",
    wildcard_constraints:
        model="[^/]+",
        task="[^/]+",
        variant=FIG_VARIANTS,
        reference=FIG_VARIANTS,
    params:
        stem=lambda wc, output: output.png[: -len(".png")],
    conda:
        "../../envs/report.yaml"
    log:
        "logs/figures/delta/{model}/{task}/{variant}_vs_{reference}.log",
    benchmark:
        "benchmarks/figures/delta/{model}/{task}/{variant}_vs_{reference}.tsv",
    shell:
        "pausetune figures --cells-table {input.cells} --kind delta --model {wildcards.model:q} --task {wildcards.task:q}"
        " --variant {wildcards.variant} --reference {wildcards.reference} --output {params.stem:q} 2>&1 | tee {log}"


rule figure_profile:
    input:
        cells="results/tables/cells.parquet",
        code=code("figures"),
    output:
        html="results/figures/{profile}/{model}/{task}.html",
        png=report(
            "results/figures/{profile}/{model}/{task}.png",
            caption="../report/profile.rst",
            category="Score vs length and depth",
            subcategory="{model} / {task}",
            labels={"model": "{model}", "task": "{task}", "figure": "{profile}"},
        ),
        svg="results/figures/{profile}/{model}/{task}.svg",
    wildcard_constraints:
        profile="length|depth",
        model="[^/]+",
        task="[^/]+",
    params:
        stem=lambda wc, output: output.png[: -len(".png")],
    conda:
        "../../envs/report.yaml"
    log:
        "logs/figures/{profile}/{model}/{task}.log",
    benchmark:
        "benchmarks/figures/{profile}/{model}/{task}.tsv",
    shell:
        "pausetune figures --cells-table {input.cells} --kind {wildcards.profile} --model {wildcards.model:q}"
        " --task {wildcards.task:q} --output {params.stem:q} 2>&1 | tee {log}"


# The mechanism (cells with eval.measure): log-prob maps and delta maps, attention profiles. Which of them the grid
# asks for: mechanism_stems() in pausetune.stages.figures.
rule figure_logprob:
    input:
        cells="results/tables/cells.parquet",
        code=code("figures"),
    output:
        html="results/figures/logprob/{model}/{task}/{variant}.html",
        png=report(
            "results/figures/logprob/{model}/{task}/{variant}.png",
            caption="../report/mechanism.rst",
            category="Answer log-prob maps",
            subcategory="{model} / {task}",
            labels={"model": "{model}", "task": "{task}", "variant": "{variant}"},
        ),
        svg="results/figures/logprob/{model}/{task}/{variant}.svg",
    wildcard_constraints:
        model="[^/]+",
        task="[^/]+",
        variant=FIG_VARIANTS,
    params:
        stem=lambda wc, output: output.png[: -len(".png")],
    conda:
        "../../envs/report.yaml"
    log:
        "logs/figures/logprob/{model}/{task}/{variant}.log",
    benchmark:
        "benchmarks/figures/logprob/{model}/{task}/{variant}.tsv",
    shell:
        "pausetune figures --cells-table {input.cells} --kind logprob --model {wildcards.model:q} --task {wildcards.task:q}"
        " --variant {wildcards.variant} --output {params.stem:q} 2>&1 | tee {log}"


rule figure_logprob_delta:
    input:
        cells="results/tables/cells.parquet",
        code=code("figures"),
    output:
        html="results/figures/logprob_delta/{model}/{task}/{variant}.html",
        png=report(
            "results/figures/logprob_delta/{model}/{task}/{variant}.png",
            caption="../report/mechanism.rst",
            category="Answer log-prob delta maps",
            subcategory="{model} / {task}",
            labels={"model": "{model}", "task": "{task}", "variant": "{variant}", "reference": "baseline"},
        ),
        svg="results/figures/logprob_delta/{model}/{task}/{variant}.svg",
    wildcard_constraints:
        model="[^/]+",
        task="[^/]+",
        variant="pause-prompt|pause-tuned|plain-tuned",
    params:
        stem=lambda wc, output: output.png[: -len(".png")],
    conda:
        "../../envs/report.yaml"
    log:
        "logs/figures/logprob_delta/{model}/{task}/{variant}.log",
    benchmark:
        "benchmarks/figures/logprob_delta/{model}/{task}/{variant}.tsv",
    shell:
        "pausetune figures --cells-table {input.cells} --kind logprob_delta --model {wildcards.model:q}"
        " --task {wildcards.task:q} --variant {wildcards.variant} --reference baseline --output {params.stem:q}"
        " 2>&1 | tee {log}"


rule figure_logprob_delta_vs:
    input:
        cells="results/tables/cells.parquet",
        code=code("figures"),
    output:
        html="results/figures/logprob_delta/{model}/{task}/{variant}_vs_{reference}.html",
        png=report(
            "results/figures/logprob_delta/{model}/{task}/{variant}_vs_{reference}.png",
            caption="../report/mechanism.rst",
            category="Answer log-prob delta maps",
            subcategory="{model} / {task}",
            labels={"model": "{model}", "task": "{task}", "variant": "{variant}", "reference": "{reference}"},
        ),
        svg="results/figures/logprob_delta/{model}/{task}/{variant}_vs_{reference}.svg",
    wildcard_constraints:
        model="[^/]+",
        task="[^/]+",
        variant=FIG_VARIANTS,
        reference=FIG_VARIANTS,
    params:
        stem=lambda wc, output: output.png[: -len(".png")],
    conda:
        "../../envs/report.yaml"
    log:
        "logs/figures/logprob_delta/{model}/{task}/{variant}_vs_{reference}.log",
    benchmark:
        "benchmarks/figures/logprob_delta/{model}/{task}/{variant}_vs_{reference}.tsv",
    shell:
        "pausetune figures --cells-table {input.cells} --kind logprob_delta --model {wildcards.model:q}"
        " --task {wildcards.task:q} --variant {wildcards.variant} --reference {wildcards.reference}"
        " --output {params.stem:q} 2>&1 | tee {log}"


rule figure_mechanism:
    input:
        cells="results/tables/cells.parquet",
        code=code("figures"),
    output:
        html="results/figures/{mechanism}/{model}/{task}.html",
        png=report(
            "results/figures/{mechanism}/{model}/{task}.png",
            caption="../report/mechanism.rst",
            category="Attention on the needle and the pauses",
            subcategory="{model} / {task}",
            labels={"model": "{model}", "task": "{task}", "figure": "{mechanism}"},
        ),
        svg="results/figures/{mechanism}/{model}/{task}.svg",
    wildcard_constraints:
        mechanism="attention_depth|attention_layer|pause_depth",
        model="[^/]+",
        task="[^/]+",
    params:
        stem=lambda wc, output: output.png[: -len(".png")],
    conda:
        "../../envs/report.yaml"
    log:
        "logs/figures/{mechanism}/{model}/{task}.log",
    benchmark:
        "benchmarks/figures/{mechanism}/{model}/{task}.tsv",
    shell:
        "pausetune figures --cells-table {input.cells} --kind {wildcards.mechanism} --model {wildcards.model:q}"
        " --task {wildcards.task:q} --output {params.stem:q} 2>&1 | tee {log}"
