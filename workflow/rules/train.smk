# Training: shards (train.objective lm) or retrieval examples (retrieval) -> LoRA / QLoRA checkpoints, results/checkpoints/{model}/{variant}/ (variant pause | plain).
# The folder is written atomically by `pausetune train`; its manifest.json is the declared output. A resumable
# training state lives beside it in results/checkpoints/{model}/{variant}.state/ (not an output, so a failed or
# killed job keeps it and the rerun continues from the last saved step).
# params: only what changes the adapter; the model list, scheduler hints and thread count are no rerun triggers.


rule train:
    input:
        data=lambda wc: train_data(wc.model, wc.variant, "manifest.json"),
        model="data/models/{model}/prepared.json",
        code=code("train"),
    output:
        manifest="results/checkpoints/{model}/{variant}/manifest.json",
        metrics="results/metrics/train/{model}/{variant}.json",
        loss_curve="results/metrics/train/{model}/{variant}_loss.csv",
    wildcard_constraints:
        variant="pause|plain",
    params:
        cfg=lambda wc: cfg(
            "seed",
            "pause",
            train={k: v for k, v in config["train"].items() if k not in ("models", "resources", "threads")},
            models=model_cfgs(wc.model),
            **({"banks": config["banks"]} if config["train"]["objective"] == "retrieval" else {}),
        ),
        data=lambda wc: ("--examples " if config["train"]["objective"] == "retrieval" else "--shards ")
        + train_data(wc.model, wc.variant),
    threads: config["train"]["threads"] or total_cores()
    resources:
        mem_mb=config["train"]["resources"]["mem_mb"],
        runtime=config["train"]["resources"]["runtime"],
        gpu=config["train"]["resources"]["gpu"],
    conda:
        "../../envs/train.yaml"
    log:
        "logs/train/{model}/{variant}.log",
    benchmark:
        "benchmarks/train/{model}/{variant}.tsv",
    shell:
        "pausetune train --config-json {params.cfg:q} --model {wildcards.model} --variant {wildcards.variant}"
        " --model-dir data/models/{wildcards.model} {params.data}"
        " --output results/checkpoints/{wildcards.model}/{wildcards.variant} --threads {threads}"
        " --metrics {output.metrics} --loss-curve {output.loss_curve} 2>&1 | tee {log}"
