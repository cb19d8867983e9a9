"""Real Snakemake runs of the workflow on the tiny config, in a fresh copy of the project."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.integration]

PROJECT_FILES = ["Snakefile", "workflow", "config", "envs", "tests/configs"]


def make_project(dest: Path, prebuilt: dict[str, Path] | None = None) -> Path:
    """A project copy. `prebuilt` (project path -> a file or folder the session's fixtures already built with the
    tiny config) starts it with those data outputs, newer than every input, so Snakemake plans none of their
    jobs: the orchestration tests share one build of the data stages where they test what comes after."""
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for rel, src in (prebuilt or {}).items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, target)
        for p in [target, *(target.rglob("*") if target.is_dir() else [])]:
            os.utime(p)  # built now: newer than the copied code and config
    return dest


def prebuilt_data(pg_raw: Path, pg_paused: Path, smollm2_dir: Path, tiny_dir: Path) -> dict[str, Path]:
    """The conftest fixtures' essays, paragraphs and prepared models at their project paths (the tiny config)."""
    return {"data/raw/paul_graham.parquet": pg_raw, "data/paused/paul_graham/heuristic.parquet": pg_paused,
            "data/paused/paul_graham/heuristic.stats.json": pg_paused.with_suffix(".stats.json"),
            "data/models/smollm2": smollm2_dir, "data/models/tiny": tiny_dir}


def snakemake(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=project,
                          capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("project"))


def test_data_stages_run_and_rerun_nothing(project):
    targets = ["data/shards/tiny/pause/manifest.json", "data/shards/tiny/plain/manifest.json"]
    snakemake(project, "--configfile", "config/config.yaml", "tests/configs/tiny.yaml", "--", *targets)
    for t in targets:
        assert (project / t).exists()
    assert (project / "data/raw/paul_graham.parquet").exists()
    assert (project / "data/paused/paul_graham/heuristic.stats.json").exists()
    again = snakemake(project, "--configfile", "config/config.yaml", "tests/configs/tiny.yaml", "-n", "--", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_param_change_reruns_only_dependants(project):
    # A different paragraph minimum changes the paused essays and both shards, not the download or the models.
    (project / "more_words.yaml").write_text("paragraphs: {method: heuristic, min_words: 20}\n")
    proc = snakemake(project, "--configfile", "config/config.yaml", "tests/configs/tiny.yaml", "more_words.yaml",
                     "-n", "--",
                     "data/shards/tiny/pause/manifest.json", "data/shards/tiny/plain/manifest.json")
    out = proc.stdout + proc.stderr
    counts = _job_counts(out)
    assert counts.get("pause") == 1 and counts.get("shards") == 2, out
    assert "download" not in counts and "prepare_model" not in counts


def _job_counts(text: str) -> dict[str, int]:
    counts, in_table = {}, False
    for line in text.splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                counts[parts[0]] = int(parts[1])
            elif parts and parts[0] == "total":
                break
    return counts


def test_lint_reports_no_errors():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
