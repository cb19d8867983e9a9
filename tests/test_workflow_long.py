"""The long-context study's route (config/study-long.yaml, issue #27) through real Snakemake, on a tiny random
Gemma-3 (sliding and full layers, no chat template: the plain layout) in place of Gemma 3 270M: examples, two
training seeds per arm, the four variants' cells with closed book and measures, tables, figures and the page."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from helpers import copy_project, snakemake

OVERLAY = {
    "models": {"tiny_gemma": {
        "source": {"kind": "random", "tokenizer_from": "smollm2",
                   "config": {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128,
                              "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
                              "head_dim": 16, "sliding_window": 64, "max_position_embeddings": 4096,
                              "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
                              "query_pre_attn_scalar": 16, "tie_word_embeddings": True}},
        "max_context": 4096, "dtype": "float32", "trust_remote_code": False, "chat_template": False}},
    "shards": {"models": ["tiny_gemma"], "seq_len": 128},
    "examples": {"count": 4, "validation_count": 2, "lengths": {"min": 200, "max": 320}},
    "train": {"models": ["tiny_gemma"], "max_steps": 2, "warmup_steps": 0, "save_every": 1, "seeds": [0, 1]},
    # one task and one length (beyond the window of 64): the route, not the grid; cheap enough for every CI run
    "eval": {"models": ["tiny_gemma"], "tasks": ["bank"], "lengths": [400], "depths": [0, 50, 100],
             "max_new_tokens": 6},
    "report": {"bootstrap": 100},
    "publish": {"page": "results/long.md", "figures_dir": "results/long_figures", "tables_dir": "results/long_tables"},
}
CONFIGS = ["--configfile", "config/study-long.yaml", "long.yaml"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_project):
    p = copy_project(data_project, tmp_path_factory.mktemp("long"))
    (p / "long.yaml").write_text(yaml.safe_dump(OVERLAY))
    proc = snakemake(p, *CONFIGS)
    return p, proc.stdout + proc.stderr


def test_the_long_study_route_builds_its_page(built):
    p, log = built
    for rule in ("examples", "train", "eval", "eval_tuned", "aggregate", "publish"):
        assert f"rule {rule}:" in log or f"localrule {rule}:" in log, rule
    assert (p / "results/long.md").exists()
    summary = pd.read_csv(p / "results/long_tables/summary.csv")
    assert set(summary["model"]) == {"tiny_gemma"}
    assert set(summary["variant"]) == {"baseline", "pause-prompt", "pause-tuned", "plain-tuned"}
    assert set(summary["task"]) == {"bank"}
    seeds = pd.read_csv(p / "results/long_tables/seed_summary.csv")
    assert {0, 1} <= set(seeds["train_seed"])
    # a tuned cell: trained under this seed, in the plain layout, with per-layer attention types
    cell = json.loads((p / "results/eval/tiny_gemma/pause-tuned/tseed1/bank/seed0/len400/depth50.json").read_text())
    assert cell["train_seed"] == 1
    att = cell["attention"]
    assert att["layer_types"] == ["sliding", "sliding", "full"] and att["window"] == 64
    assert cell["needle_attention"] == pytest.approx(att["needle"][2], abs=1e-7)  # the full layer's share
    assert "closed_book" in cell
    again = snakemake(p, *CONFIGS, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_training_and_eval_layouts_that_disagree_are_one_line(built):
    p, _ = built
    # examples in the authors' layout, evaluated in prompt.plain_template: the tuned model would be asked in a layout
    # it never saw
    (p / "layout.yaml").write_text(yaml.safe_dump({"examples": {"template": "authors"}}))
    proc = snakemake(p, *CONFIGS, "layout.yaml", "-n", check=False)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("config error:")]
    assert len(lines) == 1 and "examples.authors_template" in lines[0], proc.stdout[-2000:] + proc.stderr[-2000:]
