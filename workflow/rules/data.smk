# Data stages: download -> paragraphs -> (prepare-model) -> shards, examples. Paths: pausetune.core.layout.


rule download:
    input:
        code=code("download"),
    output:
        layout.RAW,
    params:
        # shards.sources names this source alone: the CLI's schema default (paul_graham) must not be checked
        # against a config that holds only this entry of `sources`.
        cfg=lambda wc: cfg("cache_dir", sources={wc.source: config["sources"][wc.source]},
                           shards={"sources": [wc.source]}),
    conda:
        "../../envs/data.yaml"
    log:
        layout.log("download", "{source}"),
    benchmark:
        layout.benchmark("download", "{source}"),
    shell:
        "pausetune download --config-json {params.cfg:q} --source {wildcards.source:q} --output {output:q} 2>&1 | tee {log:q}"


rule paragraphs:
    input:
        raw=layout.RAW,
        code=code("paragraphs"),
    output:
        data=layout.PARAGRAPHS,
        stats=layout.PARAGRAPHS_STATS,
    params:
        cfg=lambda wc: cfg("paragraphs"),
    conda:
        "../../envs/data.yaml"
    log:
        layout.log("paragraphs", "{source}/{method}"),
    benchmark:
        layout.benchmark("paragraphs", "{source}/{method}"),
    shell:
        "pausetune paragraphs --config-json {params.cfg:q} --method {wildcards.method:q} --input {input.raw:q}"
        " --output {output.data:q} --stats {output.stats:q} 2>&1 | tee {log:q}"


rule prepare_model:
    input:
        model_source_inputs,
        code=code("prepare_model"),
    output:
        layout.prepared(),
    params:
        cfg=lambda wc: cfg("cache_dir", "seed", models=model_cfgs(wc.model)),
    conda:
        "../../envs/data.yaml"
    log:
        layout.log("prepare_model", "{model}"),
    benchmark:
        layout.benchmark("prepare_model", "{model}"),
    shell:
        "pausetune prepare-model --config-json {params.cfg:q} --model {wildcards.model:q}"
        f" --output {wildcards_of(layout.MODEL)} 2>&1 | tee {{log:q}}"


rule examples:
    input:
        paragraphs=paragraph_inputs,
        model=layout.prepared(),
        code=code("examples"),
    output:
        layout.manifest(layout.EXAMPLES),
    wildcard_constraints:
        variant="pause|plain",
    params:
        cfg=lambda wc: cfg("seed", "shards", "paragraphs", "pause", "banks", "examples", "prompt",
                           train={"seeds": train_seeds_of(wc)},
                           eval={k: config["eval"][k] for k in ("sentence_end", "needle_prefix")},
                           tasks={t: s for t, s in config["tasks"].items() if s["kind"] in ("single", "multi")},
                           models=model_cfgs(wc.model)),
    conda:
        "../../envs/data.yaml"
    log:
        layout.log("examples", "{model}/{variant}/tseed{tseed}"),
    benchmark:
        layout.benchmark("examples", "{model}/{variant}/tseed{tseed}"),
    shell:
        "pausetune examples --config-json {params.cfg:q} --inputs {input.paragraphs:q} --model {wildcards.model:q}"
        f" --model-dir {wildcards_of(layout.MODEL)} --variant {{wildcards.variant:q}}"
        f" --train-seed {{wildcards.tseed:q}} --output {wildcards_of(layout.EXAMPLES)} 2>&1 | tee {{log:q}}"


rule shards:
    input:
        paragraphs=paragraph_inputs,
        model=layout.prepared(),
        code=code("shards"),
    output:
        layout.manifest(layout.SHARDS),
    wildcard_constraints:
        variant="pause|plain",
    params:
        cfg=lambda wc: cfg("seed", "shards", "paragraphs", "pause"),
    conda:
        "../../envs/data.yaml"
    log:
        layout.log("shards", "{model}/{variant}"),
    benchmark:
        layout.benchmark("shards", "{model}/{variant}"),
    shell:
        f"pausetune shards --config-json {{params.cfg:q}} --inputs {{input.paragraphs:q}}"
        f" --model-dir {wildcards_of(layout.MODEL)} --variant {{wildcards.variant:q}} --output {wildcards_of(layout.SHARDS)} 2>&1 | tee {{log:q}}"
