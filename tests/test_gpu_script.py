"""bench/gpu.sh, the prepared GPU check, rehearsed on this CPU with tiny shapes (GPU_SMOKE=1): the same commands a
device session runs, so its few device minutes are not spent finding a typo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.integration]


def test_gpu_script_rehearsal_writes_its_figures(smollm2_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OUT=str(out), GPU_SMOKE="1", PYTHON=sys.executable, TOK=str(smollm2_dir),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "bench/gpu.sh", "run"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    grid = json.loads((out / "eval_grid.json").read_text())
    assert grid["device"] == "cpu" and grid["cells"] > 0 and grid["speedup"] > 0 and grid["gemm_peak_gflops"] > 0, grid
    for t in ("bf16", "nf4"):
        step = json.loads((out / f"train_{t}.json").read_text())["ours"]  # --only ours --json
        assert step["tokens_per_step"] == 2 * 128 and step["step_s_median"] > 0, step
    assert "bench/gpu.sh: done" in proc.stdout
