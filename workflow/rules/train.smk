# Training: shards (train.objective lm) or retrieval examples (retrieval) -> LoRA / QLoRA checkpoints,
# layout.CHECKPOINT = results/checkpoints/{model}/{variant}/tseed{tseed}/ (variant pause | plain, tseed one of
# train.seeds: one job per model x arm x training seed).
# The folder is written atomically by `pausetune train`; its manifest.json is the declared output. A resumable
# training state lives beside it in results/checkpoints/{model}/{variant}/tseed{tseed}.state/ (not an output, so a failed or
# killed job keeps it and the rerun continues from the last saved step).
# params.cfg: only what changes the checkpoint, the train keys from core.training.recipe (the one list, which dvc.yaml's
# train params come from too). The run-only keys (models, threads, resources, save_every) are no rerun triggers:
# threads and save_every go in params.run, a function of `threads`, which Snakemake counts as derived and so leaves
# out of its params check; nor is train.loss_on under objective lm (the causal-LM loss is on every token).
from pausetune.core.training.recipe import recipe


rule train:
    input:
        data=lambda wc: train_data(wc.model, wc.variant, "manifest.json", wc.tseed),
        model=layout.prepared(),
        code=code("train"),
    output:
        manifest=layout.manifest(layout.CHECKPOINT),
        metrics=layout.TRAIN_METRICS,
        loss_curve=layout.TRAIN_LOSS,
    wildcard_constraints:
        variant="pause|plain",
        tseed="[0-9]+",
    params:
        cfg=lambda wc: cfg(
            "seed",
            "pause",
            train={**recipe(config["train"]), "seeds": train_seeds_of(wc)},
            models=model_cfgs(wc.model),
            **({"banks": config["banks"]} if config["train"]["objective"] == "retrieval" else {}),
        ),
        data=lambda wc: ["--examples" if config["train"]["objective"] == "retrieval" else "--shards",
                         train_data(wc.model, wc.variant, tseed=wc.tseed)],
        run=lambda wc, threads: ["--threads", str(threads), "--save-every", str(config["train"]["save_every"])],
    threads: config["train"]["threads"] or total_cores()
    resources:
        mem_mb=config["train"]["resources"]["mem_mb"],
        runtime=config["train"]["resources"]["runtime"],
        gpu=config["train"]["resources"]["gpu"],
    conda:
        "../../envs/train.yaml"
    log:
        layout.log("train", "{model}/{variant}/tseed{tseed}"),
    benchmark:
        layout.benchmark("train", "{model}/{variant}/tseed{tseed}"),
    shell:
        "pausetune train --config-json {params.cfg:q} --model {wildcards.model:q} --variant {wildcards.variant:q}"
        " --train-seed {wildcards.tseed:q}"
        f" --model-dir {wildcards_of(layout.MODEL)} {{params.data:q}}"
        f" --output {wildcards_of(layout.CHECKPOINT)} {{params.run:q}}"
        " --metrics {output.metrics:q} --loss-curve {output.loss_curve:q} 2>&1 | tee {log:q}"
