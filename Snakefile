# pausetune: raw essays -> paragraphs + <PAUSE> -> tokenized shards -> LoRA checkpoints -> NIAH cells -> tables, figures.
# Thin on purpose: every rule calls one `pausetune` subcommand; the logic lives in workflow/pausetune.
from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval_common.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/publish.smk"


onstart:
    # The exact command, for the results page (not an output: it must not trigger reruns).
    import datetime, json, os, shlex, sys

    os.makedirs("results", exist_ok=True)
    with open("results/run_info.json", "w") as f:
        json.dump({"command": shlex.join(["snakemake"] + sys.argv[1:]),
                   "started": datetime.datetime.now().isoformat(timespec="seconds")}, f)


rule all:
    input:
        all_targets(),
    default_target: True
