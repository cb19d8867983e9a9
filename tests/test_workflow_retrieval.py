"""Real Snakemake on the tiny config through the `examples` stage into a retrieval `train` job (issue 17)."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml

from helpers import copy_project, snakemake

OVERLAY = {
    "train": {"models": ["tiny"], "objective": "retrieval", "max_steps": 2, "warmup_steps": 0, "grad_accum": 1,
              "save_every": 1},
    "examples": {"count": 6, "validation_count": 2, "lengths": {"min": 160, "max": 256}},
    "eval": {"models": ["tiny"]},
}
CONFIGS = ["--configfile", "config/config.yaml", "tests/configs/tiny.yaml", "retrieval.yaml"]
TARGET = "results/checkpoints/tiny/pause/manifest.json"


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_project):
    # the data stages come from the session's build (same tiny config): this module tests what follows them
    p = copy_project(data_project, tmp_path_factory.mktemp("retrieval"))
    (p / "retrieval.yaml").write_text(yaml.safe_dump(OVERLAY))
    return p


@pytest.fixture(scope="module")
def trained(project) -> str:
    """The retrieval checkpoint built by real Snakemake in the module's project, whichever test asks first; what
    `snakemake -n` planned before the build."""
    dry = snakemake(project, *CONFIGS, "-n", "--", TARGET)
    snakemake(project, *CONFIGS, "--", TARGET)
    return dry.stdout + dry.stderr


def test_examples_stage_feeds_a_retrieval_train_job(project, trained):
    out = trained
    assert "rule examples:" in out and "rule train:" in out and "rule shards:" not in out  # no shards needed
    assert not any(f"rule {r}:" in out for r in ("download", "paragraphs", "prepare_model")), out  # shared, up to date
    m = json.loads((project / TARGET).read_text())
    ex = json.loads((project / "data/examples/tiny/pause/manifest.json").read_text())
    assert m["objective"] == "retrieval" and m["loss_on"] == "answer" and m["steps"] == 2
    assert m["examples"]["path"] == "data/examples/tiny/pause" and m["retrieval"]["banks"] == ex["banks"]
    assert ex["splits"]["train"]["rows"] == 6 and ex["variant"] == "pause"
    again = snakemake(project, *CONFIGS, "-n", "--", TARGET)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_overlapping_banks_stop_the_dag_build_in_one_line(project):
    sf = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
    (project / "overlap.yaml").write_text(yaml.safe_dump(
        {"banks": {"train": {"extra": [{"needle": sf, "question": "What?", "answer": "a park"}]}}}))
    proc = snakemake(project, *CONFIGS, "overlap.yaml", "-n", "--", TARGET, check=False)
    assert proc.returncode != 0
    line = next(ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("config error:"))
    assert "banks.train.extra" in line and "San Francisco" in line


def said(proc) -> str:
    return proc.stdout + proc.stderr


def error_lines(proc) -> list[str]:
    return [line for line in said(proc).splitlines() if "error" in line.lower()]


def test_example_checks_in_model_tokens_run_while_the_dag_is_built(project, trained):
    """Checks the examples job made only when it ran, after Snakemake had deleted the previous examples: one line
    while the DAG is built, no job, the earlier examples and checkpoint intact (a real run, not -n)."""
    kept = {p: (project / p).read_bytes() for p in ("data/examples/tiny/pause/manifest.json", TARGET)}
    needle = "The " + "very " * 150 + "old keeper hid the zorbleflax under the stairs."
    cases = {
        # under objective lm the examples are built too (Snakemake's `all`, dvc.yaml): their window is checked
        "lm_window.yaml": ({"train": {"objective": "lm"}, "examples": {"lengths": {"max": 5000}}},
                           "config error: config key 'examples.lengths.max': 5000 tokens exceeds models.tiny."
                           "max_context 4096 (the model window)"),
        # a training needle that leaves no room in examples.lengths.min, in the prepared model's tokens
        "long_needle.yaml": ({"banks": {"train": {"extra": [
            {"needle": needle, "question": "What did the keeper hide?", "answer": "zorbleflax"}]}}},
            "config error: config key 'examples.lengths.min': 160 tokens cannot hold the template, 1 needle(s) "
            "and the reply ("),
    }
    for name, (overlay, line) in cases.items():
        (project / name).write_text(yaml.safe_dump(overlay))
        proc = snakemake(project, *CONFIGS, name, "--", TARGET, check=False)
        errors = error_lines(proc)
        assert proc.returncode == 1 and len(errors) == 1 and errors[0].startswith(line), said(proc)[-3000:]
        assert "rule examples" not in said(proc)
    assert all((project / p).read_bytes() == data for p, data in kept.items())


def test_token_level_checks_run_once_per_input(project):
    """The DAG-time checks in the models' own tokens (seconds: transformers and a tokenizer load) are skipped when
    they passed before with the same inputs, and never hide a failure: another config is checked again."""
    marks = project / ".snakemake" / "pausetune-checks"
    snakemake(project, *CONFIGS, "-n", "--", TARGET)
    before = set(marks.iterdir())
    assert len(before) >= 2  # eval budgets and examples fit
    snakemake(project, *CONFIGS, "-n", "--", TARGET)
    assert set(marks.iterdir()) == before  # the same inputs: nothing new was checked
    needle = "The " + "very " * 150 + "old keeper hid the zorbleflax under the stairs."  # fails in tokens only
    (project / "too_long.yaml").write_text(yaml.safe_dump({"banks": {"train": {"extra": [
        {"needle": needle, "question": "What did the keeper hide?", "answer": "zorbleflax"}]}}}))
    for _ in range(2):  # a failure leaves no mark: the second call fails the same way
        proc = snakemake(project, *CONFIGS, "too_long.yaml", "-n", "--", TARGET, check=False)
        assert proc.returncode == 1 and error_lines(proc)[0].startswith(
            "config error: config key 'examples.lengths.min'"), said(proc)[-2000:]
    assert set(marks.iterdir()) == before


def test_damaged_adapter_noticed_while_the_dag_is_built(project, trained):
    ckpt, target = "results/checkpoints/tiny/pause", TARGET
    assert "Nothing to be done" in said(snakemake(project, *CONFIGS, "-n", "--", target))
    adapter = project / ckpt / "adapter" / "adapter_model.safetensors"
    good, st = adapter.read_bytes(), adapter.stat()
    try:
        # bit rot: one byte of the weights, same size and time
        with open(adapter, "r+b") as f:
            f.seek(len(good) - 10)
            f.write(bytes([good[-10] ^ 0xFF]))
        os.utime(adapter, ns=(st.st_atime_ns, st.st_mtime_ns))
        proc = snakemake(project, *CONFIGS, "-n", "--", target, check=False)
        assert proc.returncode == 1 and error_lines(proc) == [
            f"config error: {ckpt}: checkpoint damaged (adapter/adapter_model.safetensors has sha256 "
            f"{hashlib.sha256(adapter.read_bytes()).hexdigest()[:12]}..., its manifest records "
            f"{hashlib.sha256(good).hexdigest()[:12]}...); retrain it: snakemake --cores all --force {target}"], \
            said(proc)[-3000:]
        # what the line advises is not refused: it plans the training again; nor is a recovery command
        proc = snakemake(project, *CONFIGS, "-n", "--force", "--", target)
        assert "rule train:" in said(proc)
        assert "Unlocked working directory" in said(snakemake(project, *CONFIGS, "--unlock"))
    finally:
        adapter.write_bytes(good)
    assert "Nothing to be done" in said(snakemake(project, *CONFIGS, "-n", "--", target))
