"""Helpers of the orchestration tests: project copies and real Snakemake runs in them.

Building a project costs minutes on a 2-core machine, so each kind is built once per session (conftest.py) and a
module starts from its own copy (`copy_project`): outputs keep their mtimes and Snakemake its metadata, so it plans
only what the module's own change triggers.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["Snakefile", "workflow", "config", "envs", "tests/configs"]
TINY_CONFIGS = ["config/config.yaml", "tests/configs/tiny.yaml"]
# Every data stage of the tiny config: download, paragraphs, both models, both shards.
DATA_TARGETS = ["data/shards/tiny/pause/manifest.json", "data/shards/tiny/plain/manifest.json"]


class Built(NamedTuple):
    """A project built once per session (never changed by a test) and the jobs per rule its build ran."""
    path: Path
    ran: dict[str, int]


def make_project(dest: Path) -> Path:
    """A copy of the project's code and configs, nothing built."""
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def copy_project(built: Built, dest: Path) -> Path:
    """A module's own copy of a session-built project, which Snakemake sees exactly as the original (mtimes, links
    and its .snakemake records kept): it plans nothing that it would not plan there.
    The prepared models' files are hard links (half a gigabyte a copy otherwise, a dozen copies a session): nothing
    writes a model file in place (prepare-model writes a new folder and renames it), and a link keeps the mtime."""
    models = str(built.path / "data" / "models") + os.sep

    def copy(src, dst):
        if str(src).startswith(models):
            os.link(src, dst)
            return dst
        return shutil.copy2(src, dst)

    shutil.copytree(built.path, dest, symlinks=True, dirs_exist_ok=True, copy_function=copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def snakemake(project: Path, *args: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=project,
                          capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(text: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's job table (what `-n` plans, or what a run ran)."""
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


def plan(project: Path, *targets: str, configs: list[str], extra=()) -> dict[str, int]:
    """Jobs per rule that `snakemake -n` would run for these targets."""
    proc = snakemake(project, "--configfile", *configs, "-n", *extra, "--", *targets)
    return job_counts(proc.stdout + proc.stderr)


def build(project: Path, *targets: str, configs: list[str]) -> dict[str, int]:
    """Run Snakemake for these targets; the jobs per rule it ran (its own job table)."""
    proc = snakemake(project, "--configfile", *configs, "--", *targets)
    return job_counts(proc.stdout + proc.stderr)


def linked_workdir(work: Path, pg_raw: Path, pg_paragraphs: Path, models: dict[str, Path], cfg: dict) -> Path:
    """A Snakemake working folder (run with `-s ROOT/Snakefile -d work`) whose upstream is the session fixtures':
    the parquets copied with their mtimes (raw older than paragraphs, so nothing reruns), the model folders linked
    (prepared.json read through the link, with its own mtime), the data rules' code stamps older than the outputs,
    and `cfg` as config/config.yaml. Seconds, where a project copy costs a build."""
    import yaml

    from pausetune.core import layout
    from pausetune.core.fingerprint import code_stamp

    (work / "config").mkdir(parents=True)
    for src, dst in ((pg_raw, "data/raw/paul_graham.parquet"),
                     (pg_paragraphs, "data/paragraphs/paul_graham/heuristic.parquet"),
                     (pg_paragraphs.with_suffix(".stats.json"), "data/paragraphs/paul_graham/heuristic.stats.json")):
        (work / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, work / dst)
    (work / "data/models").mkdir(parents=True)
    for name, path in models.items():
        os.symlink(path, work / "data/models" / name)
    for stage in ("download", "paragraphs", "prepare_model"):
        stamp = code_stamp(f"pausetune.stages.{stage}", work / layout.CODE.format(stage=stage),
                           ROOT / "workflow" / "pausetune")
        os.utime(stamp, (0, 0))
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return work
