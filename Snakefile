# pausetune: raw essays -> paragraphs + <PAUSE> -> tokenized shards -> LoRA checkpoints -> NIAH cells -> tables, figures.
# Thin on purpose: every rule calls one `pausetune` subcommand; the logic lives in workflow/pausetune.
from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
