import os
import sys

from pausetune.core import layout
from pausetune.core.data.banks import check_banks, check_template_split
from pausetune.core.checks import once
from pausetune.core.training.checkpoints import check_adapters
from pausetune.core.config import snakemake_args, subset, validate as validate_config
from pausetune.core.data.examples import check_config as check_examples, check_examples_fit
from pausetune.core.fingerprint import code_stamp
from pausetune.core.io import PausetuneError
from pausetune.core.wheels import check_wheel_hashes

# Snakemake's validate fills the schema's defaults; ours then gives one line naming the key on error.
try:
    validate(config, "../schemas/config.schema.yaml")
    validate_config(config)
except Exception as e:
    try:
        validate_config(config)
    except PausetuneError as err:
        sys.exit(f"config error: {err}")
    raise
try:
    check_wheel_hashes(config)  # before any job runs: a rerun would delete the good output first
except PausetuneError as err:
    sys.exit(f"config error: {err}")


def total_cores():
    """--cores N (or all); 1 where a command takes no --cores (--unlock, --cleanup-metadata, --summary, --report):
    those run no job, and `workflow.cores` would refuse them."""
    from snakemake.exceptions import WorkflowError

    try:
        return workflow.cores
    except WorkflowError:
        return 1

# Needle banks (empty, overlapping) and the example length range, one line each, while the DAG is built; in the
# prepared models' own tokens too (seconds: job steps, which re-parse this file, keep the cheap checks).
try:
    check_banks(config)
    check_template_split(config)  # the out-of-template bank: no training shape, no training answer
    check_examples(config)
    if workflow.is_main_process:
        once(layout.CHECKS, "examples fit", config, layout.MODELS, check_examples_fit, config, layout.MODELS)
except PausetuneError as err:
    sys.exit(f"config error: {err}")


def cfg(*keys, **extra):
    """JSON of the config keys a step depends on, for `pausetune --config-json`; passed as params, so they trigger reruns."""
    import json

    data = json.loads(subset(config, *keys))
    data.update(extra)
    return json.dumps(data, sort_keys=True)


def model_entry_params(name):
    """A models entry as a rerun trigger: without max_context, which only gates the DAG-time checks (checked there
    against the prepared model's own window) and changes no output."""
    return {k: v for k, v in config["models"][name].items() if k != "max_context"}


def model_cfgs(model):
    """A model's entry, plus the entry it borrows a tokenizer from (random models)."""
    entry = config["models"][model]
    names = [model] + ([entry["source"]["tokenizer_from"]] if entry["source"]["kind"] == "random" else [])
    return {n: model_entry_params(n) for n in names}


SHARD_VARIANTS = ["pause", "plain"]

# Every name wildcard matches only a name (the schema's pattern, pausetune.core.layout): no path that leaves its
# folder, no shell word, is ever a job's.
NAME = layout.name_pattern().lstrip("^").rstrip("$")


wildcard_constraints:
    model=NAME,
    source=NAME,
    task=NAME,


def wildcards_of(template):
    """A core.layout template as a shell-command pattern, each wildcard quoted: {model} -> {wildcards.model:q}."""
    return template.replace("{", "{wildcards.").replace("}", ":q}")


def model_source_inputs(wc):
    src = config["models"][wc.model]["source"]
    return [layout.prepared(src["tokenizer_from"])] if src["kind"] == "random" else []


def paragraph_inputs(wildcards=None):
    method = config["paragraphs"]["method"]
    return [layout.PARAGRAPHS.format(source=s, method=method) for s in config["shards"]["sources"]]


def all_targets():
    """Everything the default target builds: shards, checkpoints, eval cells, tables, figures, the results page."""
    from pausetune.core.report.targets import report_targets
    from pausetune.core.evaluation.grid import eval_targets

    targets = []
    for model in config["shards"]["models"]:
        targets += expand(layout.manifest(layout.SHARDS), model=model, variant=SHARD_VARIANTS)
    targets += expand(layout.manifest(layout.EXAMPLES), model=config["train"]["models"], variant=SHARD_VARIANTS,
                      tseed=config["train"]["seeds"])
    targets += checkpoint_manifests()
    cells = eval_targets(config)
    targets += cells
    if cells:
        targets += report_targets(config) + [config["publish"]["page"]]
    return targets


def train_data(model, variant, file="", tseed="{tseed}"):
    """What a checkpoint of training seed `tseed` trains on: its examples (train.objective retrieval) or its shards
    (lm); or a file there."""
    folder = layout.train_data(model, variant, config["train"]["objective"], tseed)
    return f"{folder}/{file}" if file else folder


def train_seeds_of(wc):
    """The one training seed a job is for, as the config list its command validates against: a job's params then
    do not change when another seed joins train.seeds (no rerun of the seeds already trained)."""
    return [int(wc.tseed)]


def checkpoint_manifests():
    """Every checkpoint's manifest: model x arm x training seed."""
    return expand(layout.manifest(layout.CHECKPOINT), model=config["train"]["models"], variant=SHARD_VARIANTS,
                  tseed=config["train"]["seeds"])


def tuned_manifests(kind):
    """The checkpoint (or shard) manifests the page reports, when the grid has a tuned variant."""
    from pausetune.core.design import TUNED

    if not any(v in TUNED for v in config["eval"]["variants"]):
        return []
    if kind == "checkpoints":
        return checkpoint_manifests()
    return expand(layout.manifest(layout.SHARDS), model=config["train"]["models"], variant=SHARD_VARIANTS)


def code(stage):
    """A stamp of the code a stage's subcommand runs (its import closure, fingerprinted without docstrings and
    comments): the rule's code input. It changes only with what the code does, so a real edit reruns exactly the
    rules whose code changed (`snakemake -n` names the stamp under 'updated input files') and a docstring edit none."""
    import os

    package = os.path.join(workflow.basedir, "workflow", "pausetune")  # the code the jobs run (the shell prefix's)
    return code_stamp(f"pausetune.stages.{stage}", layout.CODE.format(stage=stage), package)


def forced(path, args):
    """Does this snakemake command line (snakemake_args) rebuild `path` whatever its state: --force of it,
    --forcerun of it or of train, --forceall? Read from the line: Snakemake sets its DAG settings after this file."""
    import os

    if args is None:
        return False
    given = set(args.forcerun or ()) | (set(args.targets or ()) if args.force else set())
    names = {os.path.normpath(str(t)) for t in given}
    return args.forceall or "train" in names or os.path.normpath(path) in names


# A damaged adapter, before any job runs (the checkpoints this command retrains excepted: what the line advises;
# and the recovery commands, which run no job: a locked project must stay unlockable).
if workflow.is_main_process:
    _args = snakemake_args(sys.argv[1:])
    try:
        if not any(getattr(_args, k, None) for k in ("lint", "unlock", "cleanup_metadata")):
            check_adapters(os.path.dirname(c) for c in checkpoint_manifests() if not forced(c, _args))
    except PausetuneError as err:
        sys.exit(f"config error: {err}")
