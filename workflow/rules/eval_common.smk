# Eval: needle-in-a-haystack cells, results/eval/{model}/{variant}/{task}/seed{seed}/len{length}/depth{depth}.json
# for the untrained variants (baseline, pause-prompt: once), .../{variant}/tseed{tseed}/{task}/... for the tuned ones
# (one cell set per training seed, each with its own adapter).
# One job evaluates a block of cells with one loaded model (config eval.block: cell | length | seed, see
# pausetune/core/evaluation/grid.py: block_shape); every cell is its own file and its own target. One cell alone:
#   snakemake results/eval/smollm2/baseline/single/seed0/len1000/depth50.json --config eval='{block: cell}'
# Finished cells are also kept in results/.cells/ (not an output), so a failed block's rerun redoes only the rest.
# The grid is checked here, while the DAG is built (one line naming the config key): pausetune.core.checks.check_eval.
import os
import shlex

from pausetune.core.evaluation.cells import EVAL_RESULT_KEYS
from pausetune.core.evaluation.grid import block_shape, eval_targets, grid_axes
from pausetune.core.design import ANSWER_PAUSES, CHECKPOINT, POSITIONAL, TUNED, VARIANTS, format_depth, uses_pause
from pausetune.core.checks import check_eval, once

try:
    # The tokenizer-level budget checks cost seconds; job steps (SLURM, --cores N subprocesses) re-parse this file
    # for every job, and the main process has already checked: they keep only the cheap config-level checks.
    check_eval(config, prepared_root=None)
    if workflow.is_main_process:  # the same in each model's tokens, unless it passed before with the same inputs
        once(layout.CHECKS, "eval budgets", config, layout.MODELS, check_eval, config, prepared_root=layout.MODELS)
except PausetuneError as e:
    sys.exit(f"config error: {e}")

EVAL_AXES = grid_axes(config)
EVAL_BLOCK = config["eval"]["block"]


def eval_haystack(wc=None):
    method = config["eval"].get("paragraph_method") or config["paragraphs"]["method"]
    return [layout.PARAGRAPHS.format(source=s, method=method) for s in config["eval"]["haystack_sources"]]


def eval_inputs(wc):
    inputs = {"model": layout.prepared(wc.model), "haystack": eval_haystack(), "code": code("eval")}
    if wc.variant in CHECKPOINT:
        v = CHECKPOINT[wc.variant]
        inputs["checkpoint"] = layout.manifest(layout.checkpoint(wc.model, v, wc.tseed))
        inputs["shards"] = train_data(wc.model, v, "manifest.json", wc.tseed)  # holdout: no haystack essay trained
    judge = config["eval"].get("judge")
    if judge and judge["kind"] == "local":
        inputs["judge"] = layout.prepared(judge["model"])
    return inputs


def eval_tasks(wc):
    return [wc.task] if EVAL_BLOCK != "seed" else EVAL_AXES["tasks"]


def eval_params(wc):
    """The config a block's cells are made from. The runtime knobs are passed apart: reuse and block change no
    number; threads and the device type do, and enter each cell's identity through its kernels record."""
    ev = {k: config["eval"][k] for k in EVAL_RESULT_KEYS}
    if EVAL_BLOCK == "seed":  # the job reads each task's grid from its config (no --lengths/--depths)
        ev.update(tasks=EVAL_AXES["tasks"], task_grid={t: {"lengths": ls, "depths": ds}
                                                       for t, (ls, ds) in EVAL_AXES["per_task"].items()})
    names = [wc.model]
    judge = config["eval"].get("judge")
    if judge and judge["kind"] == "local":
        names.append(judge["model"])
    for name in list(names):  # a random model's entry names the model its tokenizer comes from
        src = config["models"][name]["source"]
        if src["kind"] == "random":
            names.append(src["tokenizer_from"])
    models = {name: model_entry_params(name) for name in names}
    extra = {"pause": config["pause"]} if uses_pause(wc.variant) else {}
    if wc.variant in ANSWER_PAUSES:  # only its blocks rerun when the count changes
        ev["answer_pauses"] = config["eval"]["answer_pauses"]
    if wc.variant in POSITIONAL:
        ev["ms_poe"] = config["eval"]["ms_poe"]
    if any(config["tasks"][t].get("bank") for t in eval_tasks(wc)):
        extra["banks"] = config["banks"]  # only blocks that draw needles from the bank rerun when it changes
    if wc.variant in TUNED:
        extra["train"] = {"seeds": train_seeds_of(wc)}  # its own seed only: another seed joining reruns nothing
    return cfg("seed", "prompt", eval=ev, models=models, tasks={t: config["tasks"][t] for t in eval_tasks(wc)},
               shards={k: config["shards"][k] for k in ("holdout_haystack", "haystack_fraction")}, **extra)


def eval_extra_args(wc, input):
    # A function of `input`, so Snakemake counts it as derived and leaves it out of its params check: reuse_prefix
    # and device change no finished cell, so they must not rerun one (nor may they sit in the shell text, whose
    # every change reruns the rule).
    ev = config["eval"]
    args = [] if ev["reuse_prefix"] else ["--no-reuse"]
    if ev.get("device"):
        args += ["--device", ev["device"]]
    if "checkpoint" in input.keys():
        args += ["--train-seed", wc.tseed, "--checkpoint", os.path.dirname(input.checkpoint),
                 "--shard-manifest", input.shards]
    if "judge" in input.keys():
        args += ["--judge-model-dir", os.path.dirname(input.judge)]
    return args


def eval_resource(key):
    return lambda wc: config["eval"]["resources"][key]  # the schema fills its defaults


# pausetune.core.evaluation.grid: outputs, log and grid arguments of one job; an untrained variant's job and a
# tuned variant's (one training seed's adapter: its train seed a wildcard more), the two eval rules.
EVAL_SHAPES = {tuned: block_shape(config, tuned) for tuned in (False, True)}
EVAL_VARIANTS = {False: "|".join(v for v in VARIANTS if v not in TUNED), True: "|".join(TUNED)}
EVAL_WILDCARDS = dict(model=NAME, task=NAME, seed="-?[0-9]+", length="[0-9]+", depth="[0-9]+(\\.[0-9]+)?",
                      tseed="[0-9]+")


def eval_shell(tuned):
    return (
        "pausetune eval --config-json {params.cfg:q} --model {wildcards.model:q} --variant {wildcards.variant:q}"
        f" --seed {{wildcards.seed:q}} {EVAL_SHAPES[tuned]['args']} --model-dir {wildcards_of(layout.MODEL)}"
        f" --haystack {{input.haystack:q}} {{params.extra:q}} --threads {{threads:q}}"
        " 2>&1 | tee {log:q}"
    )
