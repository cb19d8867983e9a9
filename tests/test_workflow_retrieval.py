"""Real Snakemake on the tiny config through the `examples` stage into a retrieval `train` job (issue 17)."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml

from helpers import copy_project, job_counts, snakemake

OVERLAY = {
    "train": {"models": ["tiny"], "objective": "retrieval", "max_steps": 2, "warmup_steps": 0, "grad_accum": 1,
              "save_every": 1},
    "examples": {"count": 6, "validation_count": 2, "lengths": {"min": 160, "max": 256}},
    "eval": {"models": ["tiny"]},
}
CONFIGS = ["--configfile", "config/config.yaml", "tests/configs/tiny.yaml", "retrieval.yaml"]
TARGET = "results/checkpoints/tiny/pause/tseed0/manifest.json"
EXAMPLES = "data/examples/tiny/pause/tseed0"


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
    ex = json.loads((project / EXAMPLES / "manifest.json").read_text())
    assert m["objective"] == "retrieval" and m["loss_on"] == "answer" and m["steps"] == 2
    assert m["examples"]["path"] == EXAMPLES and m["retrieval"]["banks"] == ex["banks"]
    assert m["train_seed"] == ex["train_seed"] == 0
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
    kept = {p: (project / p).read_bytes() for p in (f"{EXAMPLES}/manifest.json", TARGET)}
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
    ckpt, target = "results/checkpoints/tiny/pause/tseed0", TARGET
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


# Two training seeds, their pause-tuned cells on a small grid (issue #26).
SEEDS = {"train": {"seeds": [0, 1]},
         "eval": {"variants": ["pause-tuned"], "tasks": ["single"], "lengths": [600], "depths": [0, 50],
                  "seeds": [0], "prefill_chunk": 128}}


def seed_cell(tseed: int, depth: int) -> str:
    return f"results/eval/tiny/pause-tuned/tseed{tseed}/single/seed0/len600/depth{depth}.json"


def test_two_training_seeds_train_two_adapters_evaluated_on_one_eval_set(project, trained):
    """train.seeds [0, 1]: a second seed adds its examples, its checkpoint and its cells and reruns nothing of seed 0;
    the two adapters differ (so do their training examples), while the eval set is the same: the two seeds' cells
    at one coordinate have the same prompt, needles and haystack."""
    import datasets

    (project / "seeds.yaml").write_text(yaml.safe_dump(SEEDS))
    configs = [*CONFIGS, "seeds.yaml"]
    targets = [seed_cell(n, d) for n in (0, 1) for d in (0, 50)]
    counts = job_counts(said(snakemake(project, *configs, "-n", "--", *targets)))
    assert counts == {"examples": 1, "train": 1, "eval_tuned": 2}, counts  # seed 1's; seed 0 trained before
    proc = snakemake(project, *configs, "--", *targets)
    assert job_counts(said(proc)) == counts, said(proc)[-3000:]

    manifests = {n: json.loads((project / f"results/checkpoints/tiny/pause/tseed{n}/manifest.json").read_text())
                 for n in (0, 1)}
    assert [manifests[n]["train_seed"] for n in (0, 1)] == [0, 1]
    assert manifests[0]["adapter_sha256"] != manifests[1]["adapter_sha256"]
    assert manifests[1]["examples"]["path"] == "data/examples/tiny/pause/tseed1"
    rows = {n: datasets.load_from_disk(str(project / f"data/examples/tiny/pause/tseed{n}/dataset")) for n in (0, 1)}
    assert rows[0]["train"]["input_ids"] != rows[1]["train"]["input_ids"]  # other examples drawn per seed
    assert rows[0]["validation"]["input_ids"] == rows[1]["validation"]["input_ids"]  # the same validation rows
    for d in (0, 50):
        a, b = (json.loads((project / seed_cell(n, d)).read_text()) for n in (0, 1))
        assert (a["train_seed"], b["train_seed"]) == (0, 1)
        assert a["adapter_sha256"] == manifests[0]["adapter_sha256"]
        assert b["adapter_sha256"] == manifests[1]["adapter_sha256"]
        assert a["prompt_sha256"] == b["prompt_sha256"], d  # one eval set for every training seed
        for key in ("needles", "question", "needle_positions", "haystack", "context_tokens"):
            assert a[key] == b[key], key
        assert a["cell_id"] != b["cell_id"]  # another adapter: another cell
    assert "Nothing to be done" in said(snakemake(project, *configs, "-n", "--", *targets))
