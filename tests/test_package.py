"""The package installs as a normal wheel: every sub-package and the schema ship, and a stage runs from the
installed copy (not the checkout: the rules' PYTHONPATH and the editable install are what hid a wheel holding only
`__init__.py` and `cli.py`)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from conftest import DEFAULT_CONFIG, ROOT


def test_wheel_installs_and_runs_a_stage_outside_the_checkout(tmp_path):
    import shutil

    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "workflow", src / "workflow", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("pausetune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("pausetune/cli.py", "pausetune/core/engine.py", "pausetune/stages/eval.py",
              "pausetune/schemas/config.schema.yaml"):
        assert f in names, f
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    # The installed copy first; the venv's site-packages (the dependencies) stay reachable, the checkout does not.
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    where = subprocess.run([sys.executable, "-c", "import pausetune.stages.eval as m; print(m.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.returncode == 0 and where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    helped = subprocess.run([str(site / "bin" / "pausetune"), "--help"], cwd=work, env=env, capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "eval" in helped.stdout, helped.stderr
    # One small stage from the installed copy: resolve and validate a config against the shipped schema.
    (work / "overlay.yaml").write_text("eval: {lengths: [1000]}\n")
    out = work / "resolved.yaml"
    ran = subprocess.run([str(site / "bin" / "pausetune"), "config", "--config", str(DEFAULT_CONFIG),
                          "overlay.yaml", "--output", str(out)], cwd=work, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    resolved = yaml.safe_load(out.read_text())
    assert resolved["eval"]["lengths"] == [1000] and resolved["eval"]["prefill_chunk"] == 512  # a schema default
    bad = subprocess.run([str(site / "bin" / "pausetune"), "config", "--config", str(DEFAULT_CONFIG),
                          "--config-json", '{"eval": {"lengths": "x"}}', "--output", str(out)], cwd=work, env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "eval.lengths" in bad.stderr and "Traceback" not in bad.stderr
