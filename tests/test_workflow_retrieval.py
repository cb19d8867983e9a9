"""Real Snakemake on the tiny config through the `examples` stage into a retrieval `train` job (issue 17)."""
from __future__ import annotations

import json

import pytest
import yaml

from test_workflow import make_project, prebuilt_data, snakemake

OVERLAY = {
    "train": {"models": ["tiny"], "objective": "retrieval", "max_steps": 2, "warmup_steps": 0, "grad_accum": 1,
              "save_every": 1},
    "examples": {"count": 6, "validation_count": 2, "lengths": {"min": 160, "max": 256}},
    "eval": {"models": ["tiny"]},
}
CONFIGS = ["--configfile", "config/config.yaml", "tests/configs/tiny.yaml", "retrieval.yaml"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, pg_raw, pg_paused, smollm2_dir, tiny_dir):
    # the data stages come from the session's fixtures (same tiny config): this module tests what follows them
    p = make_project(tmp_path_factory.mktemp("retrieval"), prebuilt_data(pg_raw, pg_paused, smollm2_dir, tiny_dir))
    (p / "retrieval.yaml").write_text(yaml.safe_dump(OVERLAY))
    return p


def test_examples_stage_feeds_a_retrieval_train_job(project):
    target = "results/checkpoints/tiny/pause/manifest.json"
    dry = snakemake(project, *CONFIGS, "-n", "--", target)
    out = dry.stdout + dry.stderr
    assert "rule examples:" in out and "rule train:" in out and "rule shards:" not in out  # no shards needed
    assert not any(f"rule {r}:" in out for r in ("download", "pause", "prepare_model")), out  # shared, up to date
    snakemake(project, *CONFIGS, "--", target)
    m = json.loads((project / target).read_text())
    ex = json.loads((project / "data/examples/tiny/pause/manifest.json").read_text())
    assert m["objective"] == "retrieval" and m["loss_on"] == "answer" and m["steps"] == 2
    assert m["examples"]["path"] == "data/examples/tiny/pause" and m["retrieval"]["banks"] == ex["banks"]
    assert ex["splits"]["train"]["rows"] == 6 and ex["variant"] == "pause"
    again = snakemake(project, *CONFIGS, "-n", "--", target)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_overlapping_banks_stop_the_dag_build_in_one_line(project):
    sf = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
    (project / "overlap.yaml").write_text(yaml.safe_dump(
        {"banks": {"train": {"extra": [{"needle": sf, "question": "What?", "answer": "a park"}]}}}))
    proc = snakemake(project, *CONFIGS, "overlap.yaml", "-n", "--", "results/checkpoints/tiny/pause/manifest.json",
                     check=False)
    assert proc.returncode != 0
    line = next(ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("config error:"))
    assert "banks.train.extra" in line and "San Francisco" in line
