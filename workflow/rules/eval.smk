# The eval rule; its helpers and the DAG-time grid checks are in eval_common.smk.


rule eval:
    input:
        unpack(eval_inputs),
    output:
        EVAL_OUT,
    wildcard_constraints:
        **EVAL_WILDCARDS,
    params:
        cfg=eval_params,
        extra=eval_extra_args,
    threads: config["eval"].get("threads") or total_cores()
    resources:
        mem_mb=eval_resource("mem_mb"),
        runtime=eval_resource("runtime"),
        gpu=eval_resource("gpu"),
    conda:
        "../../envs/eval.yaml"
    log:
        EVAL_LOG,
    benchmark:
        EVAL_SHAPE["benchmark"],
    shell:
        EVAL_SHELL
