"""The package installs as a normal wheel: every sub-package and the schema ship, and a stage runs from the
installed copy (not the checkout: the rules' PYTHONPATH and the editable install are what hid a wheel holding only
`__init__.py` and `cli.py`). And requirements.lock, what scripts/setup.sh installs, pins what pyproject asks for."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    for f in ("pausetune/cli.py", "pausetune/core/evaluation/engine.py", "pausetune/stages/eval.py",
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


LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, tuple[str, int]]:
    """requirements.lock as {name: (pinned version, number of hashes)}."""
    pins, name = {}, None
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            req = Requirement(line.rstrip(" \\"))
            (spec,) = req.specifier
            assert spec.operator == "==" and not req.marker, f"requirements.lock: {line} is not a plain pin"
            name = canonicalize_name(req.name)
            pins[name] = (spec.version, 0)
        elif line.strip().startswith("--hash=sha256:"):
            pins[name] = (pins[name][0], pins[name][1] + 1)
    return pins


def test_lock_pins_every_direct_dependency_with_hashes():
    """Every dependency pyproject names (runtime, the test extra, the build backend) is pinned in the lock inside
    pyproject's range, every pin has a hash (setup.sh installs with --require-hashes), torch is the CPU build of the
    envs' pin. A dependency added to pyproject without updating the lock fails here, not in a fresh setup."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["test"],
              *project["build-system"]["requires"]]
    pins = locked()
    for req in map(Requirement, wanted):
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock lacks {req} (pyproject.toml); update it (README, development)"
        assert req.specifier.contains(pins[name][0], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name][0]}, pyproject.toml asks {req}"
    assert all(n for _, n in pins.values()), [k for k, (_, n) in pins.items() if not n]
    env = yaml.safe_load((ROOT / "envs" / "train.yaml").read_text())["dependencies"][-1]["pip"]
    assert pins["torch"][0] == next(r for r in env if r.startswith("torch==")).removeprefix("torch==") + "+cpu"


def test_readme_has_the_locks_update_command():
    """The command recorded in the lock's header is the one the README gives."""
    header = re.search(r"^# by the following command:\n#\n#    (.+)$", LOCK.read_text(), re.M)
    assert header, "requirements.lock: no command in its header"
    assert header.group(1) in (ROOT / "README.md").read_text(), header.group(1)
