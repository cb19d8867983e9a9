# pausetune: raw essays -> paragraphs + <PAUSE> -> tokenized shards -> LoRA checkpoints -> NIAH cells -> tables, figures.
# Thin on purpose: every rule calls one `pausetune` subcommand; the logic lives in workflow/pausetune.
from snakemake.utils import min_version, validate

min_version("9.0")

# A syntax error in the embedded config: file, line and column (Snakemake's own message names neither). The
# --configfile overlays, which Snakemake has loaded already, again for an alias bomb (its validate would print the
# expansion; scripts/run.sh checks them before Snakemake starts, where a bomb of mappings hangs Snakemake's merge).
from pausetune.core.config import check_yaml_file
from pausetune.core.io import PausetuneError

try:
    for _file in ["config/config.yaml", *map(os.path.relpath, workflow.overwrite_configfiles)]:
        check_yaml_file(_file)
except PausetuneError as e:
    sys.exit(f"config error: {e}")

configfile: "config/config.yaml"

# Every rule's `pausetune <step>` runs this checkout's code (workflow/pausetune), with whichever Python the rule's
# environment puts first on PATH: the project venv, or a conda env from envs/ (dependencies only) under
# --software-deployment-method conda. So there is no installed copy to fall out of step with the Snakefile.
# (Snakemake formats the prefix like a command: literal braces are doubled.)
import os, shlex

shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={shlex.quote(os.path.join(workflow.basedir, 'workflow'))}"
    "${{PYTHONPATH:+:$PYTHONPATH}}; "
    'pausetune() {{ python -m pausetune.cli "$@"; }}; '
)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval_common.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/publish.smk"


onstart:
    import datetime, json, os, shlex, sys

    # The wheels the jobs to run read, fetched and verified before any job starts: Snakemake deletes a job's outputs
    # before running it, so a wrong sha256 (in an overlay, of a version not cached yet) found by the download job
    # itself would cost the good data/raw/{source}.parquet. Here it costs nothing (pausetune.core.wheels).
    from pausetune.core.wheels import fetch_wheels

    jobs = list(workflow.dag.needrun_jobs())
    try:
        fetch_wheels(config, sources={j.wildcards["source"] for j in jobs if j.rule.name == "download"},
                     models={j.wildcards["model"] for j in jobs if j.rule.name == "prepare_model"})
    except PausetuneError as err:
        sys.exit(f"config error: {err}")

    # The exact command, for the results page (not an output: it must not trigger reruns).
    os.makedirs(os.path.dirname(layout.RUN_INFO), exist_ok=True)
    with open(layout.RUN_INFO, "w") as f:
        json.dump({"command": shlex.join(["snakemake"] + sys.argv[1:]),
                   "started": datetime.datetime.now().isoformat(timespec="seconds")}, f)


rule all:
    input:
        all_targets(),
    default_target: True
