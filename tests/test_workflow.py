"""Real Snakemake runs of the workflow on the tiny config, in a fresh copy of the project."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from helpers import DATA_TARGETS, TINY_CONFIGS, copy_project, job_counts, snakemake

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_project):
    return copy_project(data_project, tmp_path_factory.mktemp("project"))


def test_data_stages_run_and_rerun_nothing(data_project, project):
    # The session's one build of the data stages (conftest.data_project) ran each data job once, from nothing.
    assert data_project.ran == {"download": 1, "paragraphs": 1, "prepare_model": 2, "shards": 2}, data_project.ran
    for t in DATA_TARGETS:
        assert (project / t).exists()
    assert (project / "data/raw/paul_graham.parquet").exists()
    assert (project / "data/paragraphs/paul_graham/heuristic.stats.json").exists()
    again = snakemake(project, "--configfile", *TINY_CONFIGS, "-n", "--", *DATA_TARGETS)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_param_change_reruns_only_dependants(project):
    # A different paragraph minimum changes the paragraphs and both shards, not the download or the models.
    (project / "more_words.yaml").write_text("paragraphs: {method: heuristic, min_words: 20}\n")
    proc = snakemake(project, "--configfile", *TINY_CONFIGS, "more_words.yaml", "-n", "--", *DATA_TARGETS)
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    assert counts.get("paragraphs") == 1 and counts.get("shards") == 2, out
    assert "download" not in counts and "prepare_model" not in counts


def test_lint_reports_no_errors():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ training seeds (#26)
SEEDS = {"train": {"models": ["tiny"], "seeds": [0, 1]},
         "eval": {"models": ["tiny"], "tasks": ["single"], "lengths": [1000], "depths": [0, 50], "seeds": [0]}}


def test_training_seeds_plan_a_job_per_seed_for_what_they_train(project):
    """train.seeds [0, 1], the six variants: one examples and one train job per (model, arm, seed), one tuned eval
    block per (variant, seed); baseline and pause-prompt are evaluated once, whatever the number of seeds."""
    import yaml

    (project / "seeds.yaml").write_text(yaml.safe_dump(SEEDS))
    proc = snakemake(project, "--configfile", *TINY_CONFIGS, "seeds.yaml", "-n", "-p")
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    assert counts["examples"] == counts["train"] == 1 * 2 * 2, counts
    assert counts["eval"] == 2 and counts["eval_tuned"] == 4 * 2, counts  # one length: one block per variant
    assert "shards" not in counts  # built by the session: shared by every seed
    trains = sorted(line.split("--output ")[1].split()[0] for line in out.splitlines() if "pausetune train " in line)
    assert trains == [f"results/checkpoints/tiny/{v}/tseed{n}" for v in ("pause", "plain") for n in (0, 1)]
    evals = [line for line in out.splitlines() if "pausetune eval " in line]
    untrained = [e for e in evals if "--variant baseline" in e or "--variant pause-prompt" in e]
    assert len(untrained) == 2 and not any("--train-seed" in e or "--checkpoint" in e for e in untrained)
    for variant, arm in (("pause-tuned-on-plain", "pause"), ("plain-tuned-on-paused", "plain")):
        for n in (0, 1):
            job = [e for e in evals if f"--variant {variant} " in e and f"--train-seed {n} " in e]
            assert len(job) == 1 and f"--checkpoint results/checkpoints/tiny/{arm}/tseed{n} " in job[0], job


@pytest.mark.parametrize("overlay, line", [
    ({"train": {"seeds": []}}, "config error: config key 'train.seeds': [] should be non-empty"),
    ({"train": {"seeds": [0, 1, 0]}}, "config error: config key 'train.seeds': [0, 1, 0] has non-unique elements"),
    ({"train": {"models": []}, "eval": {"models": ["tiny"], "variants": ["baseline", "plain-tuned-on-paused"]}},
     "config error: config key 'eval.variants': 'plain-tuned-on-paused' needs a checkpoint of model 'tiny', which "
     "train.models does not list"),
    ({"report": {"primary": {"variant": "pause-tuned", "reference": "plain-tuned", "task": "bank"}}},
     "config error: config key 'report.primary.task': unknown task 'bank'; eval.tasks: ['single']"),
    ({"report": {"primary": {"variant": "pause-tuned-on-paused", "reference": "plain-tuned", "task": "single"}}},
     "config error: config key 'report.primary.variant': unknown variant 'pause-tuned-on-paused'; known: "
     "['baseline', 'pause-prompt', 'pause-tuned', 'plain-tuned', 'pause-tuned-on-plain', 'plain-tuned-on-paused', "
     "'pause-before-answer', 'ms-poe']"),
], ids=["seeds-empty", "seeds-duplicate", "crossed-untrained-model", "primary-task", "primary-variant"])
def test_seed_and_design_errors_stop_before_any_job_in_one_line(project, overlay, line):
    import yaml

    (project / "bad.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake(project, "--configfile", *TINY_CONFIGS, "bad.yaml", "-n", check=False)
    out = proc.stdout + proc.stderr
    errors = [ln for ln in out.splitlines() if "error" in ln.lower()]
    assert proc.returncode == 1 and errors == [line], out[-3000:]
    assert "Building DAG of jobs" not in out and "rule " not in out, out[-3000:]
