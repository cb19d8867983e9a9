# Data stages: download -> pause -> (prepare-model) -> shards.


rule download:
    input:
        code=code("download"),
    output:
        "data/raw/{source}.parquet",
    params:
        # shards.sources names this source alone: the CLI's schema default (paul_graham) must not be checked
        # against a config that holds only this entry of `sources`.
        cfg=lambda wc: cfg("cache_dir", sources={wc.source: config["sources"][wc.source]},
                           shards={"sources": [wc.source]}),
    conda:
        "../../envs/data.yaml"
    log:
        "logs/download/{source}.log",
    benchmark:
        "benchmarks/download/{source}.tsv",
    shell:
        "pausetune download --config-json {params.cfg:q} --source {wildcards.source} --output {output} 2>&1 | tee {log}"


rule pause:
    input:
        raw="data/raw/{source}.parquet",
        code=code("paragraphs"),
    output:
        data="data/paused/{source}/{method}.parquet",
        stats="data/paused/{source}/{method}.stats.json",
    params:
        cfg=lambda wc: cfg("paragraphs", "pause"),
    conda:
        "../../envs/data.yaml"
    log:
        "logs/pause/{source}/{method}.log",
    benchmark:
        "benchmarks/pause/{source}/{method}.tsv",
    shell:
        "pausetune pause --config-json {params.cfg:q} --method {wildcards.method:q} --input {input.raw}"
        " --output {output.data} --stats {output.stats} 2>&1 | tee {log}"


rule prepare_model:
    input:
        model_source_inputs,
        code=code("prepare_model"),
    output:
        "data/models/{model}/prepared.json",
    params:
        cfg=lambda wc: cfg("cache_dir", "seed", models=model_cfgs(wc.model)),
    conda:
        "../../envs/data.yaml"
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "benchmarks/prepare_model/{model}.tsv",
    shell:
        "pausetune prepare-model --config-json {params.cfg:q} --model {wildcards.model} --output data/models/{wildcards.model}"
        " 2>&1 | tee {log}"


rule examples:
    input:
        paused=paused_inputs,
        model="data/models/{model}/prepared.json",
        code=code("examples"),
    output:
        "data/examples/{model}/{variant}/manifest.json",
    wildcard_constraints:
        variant="pause|plain",
    params:
        cfg=lambda wc: cfg("seed", "shards", "paragraphs", "pause", "banks", "examples", "prompt",
                           eval={k: config["eval"][k] for k in ("sentence_end", "needle_prefix")},
                           tasks={t: s for t, s in config["tasks"].items() if s["kind"] in ("single", "multi")},
                           models=model_cfgs(wc.model)),
    conda:
        "../../envs/data.yaml"
    log:
        "logs/examples/{model}/{variant}.log",
    benchmark:
        "benchmarks/examples/{model}/{variant}.tsv",
    shell:
        "pausetune examples --config-json {params.cfg:q} --inputs {input.paused} --model {wildcards.model}"
        " --model-dir data/models/{wildcards.model} --variant {wildcards.variant}"
        " --output data/examples/{wildcards.model}/{wildcards.variant} 2>&1 | tee {log}"


rule shards:
    input:
        paused=paused_inputs,
        model="data/models/{model}/prepared.json",
        code=code("shards"),
    output:
        "data/shards/{model}/{variant}/manifest.json",
    wildcard_constraints:
        variant="pause|plain",
    params:
        cfg=lambda wc: cfg("seed", "shards", "paragraphs", "pause"),
    conda:
        "../../envs/data.yaml"
    log:
        "logs/shards/{model}/{variant}.log",
    benchmark:
        "benchmarks/shards/{model}/{variant}.tsv",
    shell:
        "pausetune shards --config-json {params.cfg:q} --inputs {input.paused} --model-dir data/models/{wildcards.model}"
        " --variant {wildcards.variant} --output data/shards/{wildcards.model}/{wildcards.variant} 2>&1 | tee {log}"
