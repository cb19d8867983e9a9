# Publish: the results page (config publish.page), generated from results/tables/ and the figures, never by hand.
from pausetune.core.report.targets import check_output_dirs, report_targets

try:
    check_output_dirs(config)  # the folder outputs below: Snakemake empties them before publish runs
except PausetuneError as e:
    sys.exit(f"config error: {e}")


rule publish:
    input:
        tables=[layout.table(t) for t in ("summary.csv", "deltas.csv", "measures.csv", "measure_deltas.csv",
                                          "seed_deltas.csv", "variance_components.csv", "u_shape.csv",
                                          "distance.csv", "effective_length.csv")],
        figures=lambda wc: [f for f in report_targets(config) if f.endswith(".png")],
        checkpoints=lambda wc: tuned_manifests("checkpoints"),
        shards=lambda wc: tuned_manifests("shards"),
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
        layout.log("publish", "publish"),
    benchmark:
        layout.benchmark("publish", "publish"),
    shell:
        f"pausetune publish --config-json {{params.cfg:q}} --tables {layout.TABLES} --figures {{input.figures:q}}"
        f" --checkpoints {{input.checkpoints:q}} --shards {{input.shards:q}} --benchmarks {layout.BENCHMARKS}"
        f" --run-info {layout.RUN_INFO} --output {{output.page:q}} 2>&1 | tee {{log:q}}"
