# Publish: the results page (config publish.page), generated from results/tables/ and the figures, never by hand.
from pausetune.stages.figures import report_targets


rule publish:
    input:
        tables=["results/tables/summary.csv", "results/tables/deltas.csv", "results/tables/measures.csv",
                "results/tables/measure_deltas.csv"],
        figures=lambda wc: [f for f in report_targets(config) if f.endswith(".png")],
        checkpoints=lambda wc: tuned_manifests("results/checkpoints/{model}/{variant}/manifest.json"),
        shards=lambda wc: tuned_manifests("data/shards/{model}/{variant}/manifest.json"),
        code=code("publish"),
    output:
        page=config["publish"]["page"],
        figures=directory(config["publish"]["figures_dir"]),  # the PNG copies the page links to
        tables=directory(config["publish"]["tables_dir"]),  # the small tables the page's numbers come from
    params:
        cfg=lambda wc: cfg(*config),  # all of it: the page shows the resolved config's hash (DVC's is the same)
    conda:
        "../../envs/report.yaml"
    log:
        "logs/publish/publish.log",
    benchmark:
        "benchmarks/publish/publish.tsv",
    shell:
        "pausetune publish --config-json {params.cfg:q} --tables results/tables --figures {input.figures}"
        " --checkpoints {input.checkpoints} --shards {input.shards} --benchmarks benchmarks --run-info results/run_info.json"
        " --output {output.page} 2>&1 | tee {log}"
