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
