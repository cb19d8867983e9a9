"""Partial reruns by target: real Snakemake runs in project copies on the tiny config.

One eval cell, one checkpoint and one figure can each be requested alone and build only what they need;
touching the raw essays reruns exactly their dependants; `--forcerun` of one rule reruns it and what follows.
The builds accumulate as a user's session would (a cell, then a checkpoint, then a figure: module fixtures, each
on a copy of the one before); every test works in its own copy, so none depends on another having run.
"""
from __future__ import annotations

import json
import os
import shlex
import time
from functools import partial
from pathlib import Path

import pytest
import yaml

import helpers
from helpers import Built, copy_project, make_project
from pausetune.core.training.recipe import RECIPE_KEYS

pytestmark = [pytest.mark.integration]

OVERLAY = {
    "train": {"models": ["tiny"], "max_steps": 2, "warmup_steps": 0, "save_every": 1},
    # two variants keep it short: an untuned one (no checkpoint) and a tuned one (one checkpoint)
    "eval": {"models": ["tiny"], "variants": ["baseline", "pause-tuned"], "tasks": ["single"], "lengths": [1000],
             "depths": [0, 100], "seeds": [0]},
}
CONFIGS = ["config/config.yaml", "tests/configs/tiny.yaml", "reruns.yaml"]
CELL = "results/eval/tiny/baseline/single/seed0/len1000/depth0.json"
CHECKPOINT = "results/checkpoints/tiny/pause/tseed0/manifest.json"
FIGURE = "results/figures/heatmap/tiny/single/pause-tuned.png"
RAW = "data/raw/paul_graham.parquet"
plan = partial(helpers.plan, configs=CONFIGS)
build = partial(helpers.build, configs=CONFIGS)


def built(project: Path, top: str) -> set[str]:
    root = project / top
    return {str(p.relative_to(project)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def fresh(dest: Path) -> Path:
    """A project copy with this module's overlays, nothing built."""
    p = make_project(dest)
    (p / "reruns.yaml").write_text(yaml.safe_dump(OVERLAY))
    (p / "block_cell.yaml").write_text(yaml.safe_dump({"eval": {"block": "cell"}}))
    return p


@pytest.fixture(scope="module")
def cell_built(tmp_path_factory) -> Built:
    """From nothing, one cell alone (eval.block = cell: the job is that one cell)."""
    p = fresh(tmp_path_factory.mktemp("reruns_cell"))
    return Built(p, build(p, CELL, configs=CONFIGS + ["block_cell.yaml"]))


@pytest.fixture(scope="module")
def checkpoint_built(tmp_path_factory, cell_built) -> Built:
    """Then one checkpoint alone."""
    p = copy_project(cell_built, tmp_path_factory.mktemp("reruns_checkpoint"))
    return Built(p, build(p, CHECKPOINT))


@pytest.fixture(scope="module")
def figure_built(tmp_path_factory, checkpoint_built) -> Built:
    """Then one figure alone."""
    p = copy_project(checkpoint_built, tmp_path_factory.mktemp("reruns_figure"))
    return Built(p, build(p, FIGURE))


@pytest.fixture
def project(figure_built, tmp_path) -> Path:
    """A test's own copy of the project with the cell, the checkpoint and the figure built."""
    return copy_project(figure_built, tmp_path / "project")


def test_one_cell_alone(tmp_path, cell_built):
    # Its block (all depths of its length: one model load) and what that needs: no shards, no training.
    assert plan(fresh(tmp_path), CELL) == {"download": 1, "paragraphs": 1, "prepare_model": 2, "eval": 1}
    # With eval.block = cell the job is that one cell (built by cell_built).
    project, ran = cell_built
    assert ran == {"download": 1, "paragraphs": 1, "prepare_model": 2, "eval": 1}, ran
    assert built(project, "results/eval") == {CELL}
    assert not (project / "data" / "shards").exists() and not (project / "results" / "checkpoints").exists()
    # How a cell is computed but not what it is (prefix reuse, the device when already the same type) reruns nothing;
    # the job still gets them.
    project = copy_project(cell_built, tmp_path / "runtime")
    (project / "runtime.yaml").write_text(yaml.safe_dump({"eval": {"reuse_prefix": False, "device": "cpu"}}))
    configs = CONFIGS + ["block_cell.yaml", "runtime.yaml"]
    assert plan(project, CELL, configs=configs) == {}
    proc = helpers.snakemake(project, "--configfile", *configs, "-n", "-p", "--forcerun", "eval", "--", CELL)
    cmd = next(line for line in (proc.stdout + proc.stderr).splitlines() if "pausetune eval " in line)
    assert "--no-reuse" in shlex.split(cmd) and "--device cpu" in cmd, cmd


def test_one_checkpoint_alone(checkpoint_built, tmp_path):
    # The data stages are done: the pause shards and one training job, not the plain ones.
    project, ran = checkpoint_built
    assert ran == {"shards": 1, "train": 1}, ran
    assert (project / CHECKPOINT).exists()
    assert not (project / "results/checkpoints/tiny/plain").exists()
    assert not (project / "data/shards/tiny/plain").exists()
    assert built(project, "results/eval") == {CELL}
    # Only the recipe (core.training.recipe) retrains: not the run-only keys, nor train.loss_on under objective lm (the loss
    # is on every token). The job gets exactly the recipe and its own training seed, and the run-only knobs apart:
    # another training seed in train.seeds adds its own jobs, it retrains none of the seeds already trained.
    project = copy_project(checkpoint_built, tmp_path / "project")
    run_only = {"loss_on": "all", "save_every": 2, "threads": 1, "models": ["tiny", "smollm2"], "seeds": [0, 1],
                "resources": {"mem_mb": 1000, "runtime": 5}}
    (project / "run_only.yaml").write_text(yaml.safe_dump({"train": run_only}))
    assert plan(project, CHECKPOINT, configs=CONFIGS + ["run_only.yaml"]) == {}
    proc = helpers.snakemake(project, "--configfile", *CONFIGS, "run_only.yaml", "-n", "-p", "--forcerun", "train",
                             "--", CHECKPOINT)
    cmd = shlex.split(next(line for line in (proc.stdout + proc.stderr).splitlines() if "pausetune train " in line))
    job = json.loads(cmd[cmd.index("--config-json") + 1])
    assert set(job["train"]) == set(RECIPE_KEYS) - {"loss_on"} | {"seeds"}, sorted(job["train"])
    assert job["train"]["seeds"] == [0] and cmd[cmd.index("--train-seed") + 1] == "0"  # its seed, not the list
    assert cmd[cmd.index("--save-every") + 1] == "2" and cmd[cmd.index("--threads") + 1] == "1"
    (project / "recipe.yaml").write_text(yaml.safe_dump({"train": {"lr": 1e-3}}))
    assert plan(project, CHECKPOINT, configs=CONFIGS + ["recipe.yaml"]) == {"train": 1}


def test_one_figure_alone(figure_built):
    # A figure reads the cells table, which is built from every cell of the grid: so the whole grid (both
    # blocks: the lone cell built before is not a whole block), the table, and this one figure; no other figure.
    project, ran = figure_built
    assert ran == {"eval": 1, "eval_tuned": 1, "aggregate": 1, "figure_heatmap": 1}, ran
    stem = FIGURE[: -len(".png")]
    assert built(project, "results/figures") == {f"{stem}.{ext}" for ext in ("html", "png", "svg")}
    assert (project / "results/tables/cells.parquet").exists()


def test_forcerun_one_rule(project):
    # Forcing the shards reruns them, the training on them, the tuned block, the table and the figure; the
    # baseline block reads no shard and stays.
    counts = plan(project, FIGURE, extra=["--forcerun", "shards"])
    assert counts == {"shards": 1, "train": 1, "eval_tuned": 1, "aggregate": 1, "figure_heatmap": 1}, counts
    # --forcerun of the eval rule: the untrained variants' blocks (baseline here), then the table and the figure;
    # the tuned variants' rule is eval_tuned. Both: every block of the grid. Nothing upstream.
    counts = plan(project, FIGURE, extra=["--forcerun", "eval"])
    assert counts == {"eval": 1, "aggregate": 1, "figure_heatmap": 1}, counts
    counts = plan(project, FIGURE, extra=["--forcerun", "eval_tuned"])
    assert counts == {"eval_tuned": 1, "aggregate": 1, "figure_heatmap": 1}, counts
    counts = plan(project, FIGURE, extra=["--forcerun", "eval", "eval_tuned"])
    assert counts == {"eval": 1, "eval_tuned": 1, "aggregate": 1, "figure_heatmap": 1}, counts


def test_touching_the_raw_essays_reruns_their_dependants(project):
    raw = project / RAW
    # A bare touch changes nothing: Snakemake 9 compares checksums of inputs under --max-checksum-file-size
    # (1 MB; the raw essays are ~0.4 MB) before it believes a newer mtime.
    later = time.time() + 5
    os.utime(raw, (later, later))
    assert plan(project, FIGURE) == {}
    # An edited essay: everything made from the essays reruns: paragraphs, shards, training, every cell (the
    # haystack is made of the paragraphs), the table, the figure. Not the download, not the models.
    import pandas as pd

    from pausetune.core.io import sha256_text

    df = pd.read_parquet(raw)
    df.loc[0, "text"] = df.loc[0, "text"] + "\n\nOne more paragraph, added by a test to see what reruns."
    df.loc[0, "sha256"] = sha256_text(df.loc[0, "text"])
    df.to_parquet(raw, index=False)
    counts = plan(project, FIGURE)
    assert counts == {"paragraphs": 1, "shards": 1, "train": 1, "eval": 1, "eval_tuned": 1, "aggregate": 1,
                      "figure_heatmap": 1}, counts
    # Really rerun the data part of it: the paragraphs and the shards, nothing upstream.
    assert build(project, "data/shards/tiny/pause/manifest.json") == {"paragraphs": 1, "shards": 1}
    assert plan(project, CHECKPOINT) == {"train": 1}  # its shards are new now


def test_seed_block_with_a_task_grid(project):
    """eval.block seed with eval.task_grid: one job per (model, variant, seed) writes each task's own grid."""
    (project / "seed_block.yaml").write_text(yaml.safe_dump({"eval": {
        "block": "seed", "tasks": ["single", "multi"], "task_grid": {"multi": {"lengths": [1000], "depths": [0]}}}}))
    configs = CONFIGS + ["seed_block.yaml"]
    multi = "results/eval/tiny/baseline/multi/seed0/len1000/depth0.json"
    assert plan(project, multi, configs=configs) == {"eval": 1}
    ran = build(project, multi, configs=configs)
    assert ran == {"eval": 1}, ran
    assert built(project, "results/eval/tiny/baseline") == {
        multi, CELL, "results/eval/tiny/baseline/single/seed0/len1000/depth100.json"}
    cell = json.loads((project / multi).read_text())
    assert cell["task"] == "multi" and len(cell["needle_positions"]) == 3
    # the whole grid: one eval job per variant and seed (the tuned variant's per training seed: one here)
    counts = plan(project, "results/tables/cells.parquet", configs=configs, extra=["--forcerun", "eval", "eval_tuned"])
    assert counts["eval"] == 1 and counts["eval_tuned"] == 1 and counts["aggregate"] == 1, counts
