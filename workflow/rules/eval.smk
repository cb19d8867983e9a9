# The eval rules (eval: baseline and pause-prompt, once; eval_tuned: a tuned variant's cells of one training
# seed); their helpers and the DAG-time grid checks are in eval_common.smk. A loop of `rule:`: the shell line names
# no loop variable (Snakemake formats it again when the job runs), only what each rule's own record holds.
for _tuned in (False, True):

    rule:
        name:
            "eval_tuned" if _tuned else "eval"
        input:
            unpack(eval_inputs),
        output:
            EVAL_SHAPES[_tuned]["out"],
        wildcard_constraints:
            variant=EVAL_VARIANTS[_tuned],
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
            EVAL_SHAPES[_tuned]["log"],
        benchmark:
            EVAL_SHAPES[_tuned]["benchmark"],
        shell:
            eval_shell(_tuned)
