"""Cells, checkpoints and tables know the code that made them; edits rerun exactly what they touch.

Library-level: the import closure each stage runs, and that core/ never imports stages/; dvc.yaml's code deps and
recipe params are what the package says. Workflow-level, in a project built once (real Snakemake on the tiny
model: cells, table, figure and one checkpoint), each test in its own copy of it: edit docstrings (nothing to
do), scoring.py, figures.py, lora.py or haystack.py of the copy and check what `snakemake -n` plans, what reruns,
and that the cell cache never serves a cell of other code.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from pausetune.core.fingerprint import closure, closure_files, fingerprint
from pausetune.core.training.recipe import RECIPE_KEYS, RUN_ONLY_KEYS
from helpers import Built, build, copy_project, plan, snakemake

PKG = ROOT / "workflow" / "pausetune"


def test_stage_closures():
    ev = closure_files("pausetune.stages.eval")
    for f in ("core/evaluation/scoring.py", "core/data/haystack.py", "core/evaluation/engine.py",
              "core/data/needles.py", "stages/eval.py"):
        assert f"workflow/pausetune/{f}" in ev
    assert not any("figures" in f or "train.py" in f for f in ev)
    figs = closure_files("pausetune.stages.figures")
    assert "workflow/pausetune/core/evaluation/scoring.py" not in figs and "workflow/pausetune/stages/figures.py" in figs
    # generation's fingerprint leaves scoring out; the whole stage's keeps it
    scoring = ("pausetune.core.evaluation.scoring",)
    assert scoring[0] not in closure("pausetune.stages.eval", exclude=scoring)
    assert fingerprint("pausetune.stages.eval") != fingerprint("pausetune.stages.eval", exclude=scoring)


def _core_imports(f: Path) -> list[str]:
    """The absolute pausetune modules a core file imports (relative imports resolved)."""
    pkg = ".".join(f.relative_to(PKG.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("pausetune")]


def test_core_never_imports_stages():
    for f in sorted((PKG / "core").rglob("*.py")):
        for target in _core_imports(f):
            assert not target.startswith(("pausetune.stages", "pausetune.cli")), f"{f} imports {target}"


# core's sub-packages, each above the flat base modules (io, config, layout, models, kernels, ...): a sub-package may
# import the base and the sub-packages below it, never one above; the base imports no sub-package (checks excepted:
# the DAG-time checks sit on top of everything).
CORE_LAYERS = {"data": set(), "training": {"data"}, "evaluation": {"data", "training"}, "report": set()}


def test_core_sub_packages_are_layered():
    assert {p.name for p in (PKG / "core").iterdir() if (p / "__init__.py").is_file()} == set(CORE_LAYERS)
    for f in sorted((PKG / "core").rglob("*.py")):
        rel = f.relative_to(PKG / "core").parts
        own = rel[0] if len(rel) > 1 else None
        allowed = ({own} | CORE_LAYERS[own]) if own else (set(CORE_LAYERS) if f.stem == "checks" else set())
        for target in _core_imports(f):
            parts = target.split(".")
            if len(parts) > 2 and parts[1] == "core" and parts[2] in CORE_LAYERS:
                assert parts[2] in allowed, f"core/{'/'.join(rel)} imports {target} (may import {sorted(allowed)})"


def test_stages_never_import_other_stages():
    for f in sorted((PKG / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and f.name != "__init__.py":
                raise AssertionError(f"stages/{f.name} imports .{node.module} (a stage may import only core)")


def test_rules_and_benches_import_only_core():
    """Rules and benches read the package's libraries (core), never a stage: a stage is a step, run as a command."""
    import re

    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk")), *sorted((ROOT / "bench").glob("*.py"))]
    pattern = re.compile(r"^\s*(from\s+pausetune\.stages\b|import\s+pausetune\.stages\b)", re.M)
    offenders = [f"{f.relative_to(ROOT)}: {m.group(0).strip()}" for f in files for m in pattern.finditer(f.read_text())]
    assert not offenders, offenders


def test_dvc_code_deps_are_the_import_closures():
    proc = subprocess.run([sys.executable, "scripts/dvc_code_deps.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = stages["aggregate"]["deps"]
    assert "workflow/pausetune/stages/aggregate.py" in deps and "workflow/pausetune/core/evaluation/scoring.py" not in deps


def test_dvc_train_params_are_the_recipe():
    """dvc.yaml's train params list every recipe key (the list training's run key and the rule's params come from)
    and no run-only key; DVC refuses a listed key that config/config.yaml lacks, so each is spelled out there."""
    params = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"][0]["config/config.yaml"]
    train = [p for p in params if p.split(".")[0] == "train"]
    assert train == [f"train.{k}" for k in RECIPE_KEYS]
    assert not {f"train.{k}" for k in RUN_ONLY_KEYS} & set(params)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    missing = []
    for key in params:
        node = config
        for part in key.replace("${item.model}", config["train"]["models"][0]).split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    assert not missing, missing


# ------------------------------------------------------------------------------------------- workflow

OVERLAY = {"eval": {"models": ["tiny"], "variants": ["baseline"], "tasks": ["single"], "lengths": [1000],
                    "depths": [0, 100], "seeds": [0]},
           "train": {"models": ["tiny"], "max_steps": 2, "warmup_steps": 0, "save_every": 1}}
CONFIGS = ["config/config.yaml", "tests/configs/tiny.yaml", "code.yaml"]
CELL = "results/eval/tiny/baseline/single/seed0/len1000/depth0.json"
CHECKPOINT = "results/checkpoints/tiny/pause/tseed0/manifest.json"
TABLE = "results/tables/summary.csv"
FIGURE = "results/figures/heatmap/tiny/single/baseline.png"
# A real change to the scoring rule: facts are never found, so every score becomes 1.
NEVER_FOUND = ("def fact_found(fact: str, answer_norm: str) -> bool:\n",
               "def fact_found(fact: str, answer_norm: str) -> bool:\n    return False\n")


def edit(project: Path, rel: str, old: str, new: str) -> None:
    f = project / "workflow" / "pausetune" / rel
    text = f.read_text()
    assert old in text, (rel, old)
    f.write_text(text.replace(old, new, 1))


def cell(project: Path) -> dict:
    return json.loads((project / CELL).read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_project) -> Built:
    """The grid's cells, table and figure and one checkpoint, built once on the session's data stages; tests read
    it, never edit it."""
    p = copy_project(data_project, tmp_path_factory.mktemp("code"))
    (p / "code.yaml").write_text(yaml.safe_dump(OVERLAY))
    return Built(p, build(p, TABLE, FIGURE, CHECKPOINT, configs=CONFIGS))


@pytest.fixture
def project(built, tmp_path):
    """A test's own copy of the built project, to edit."""
    return copy_project(built, tmp_path / "project")


@pytest.mark.integration
def test_cells_checkpoints_tables_record_their_code(built):
    c = cell(built.path)
    assert set(c["code"]) == {"generate", "score"} and all(len(v) == 64 for v in c["code"].values())
    man = json.loads((built.path / "results/tables/manifest.json").read_text())
    assert man["code"]["module"] == "pausetune.stages.aggregate" and man["cells"] == 2
    assert man["cell_code"]["generate"] == [c["code"]["generate"]]


@pytest.mark.integration
def test_scoring_edit_rescores_without_generating(project):
    before = cell(project)
    edit(project, "core/evaluation/scoring.py", *NEVER_FOUND)
    planned = plan(project, TABLE, FIGURE, configs=CONFIGS)
    assert planned.get("eval") == 1 and planned.get("aggregate") == 1, planned
    proc = snakemake(project, "--configfile", *CONFIGS, "--", TABLE, FIGURE)
    log = (project / "logs").rglob("*.log")
    eval_log = next(p for p in log if "eval" in str(p)).read_text()
    assert "nothing to do (0 done, 0 from the cell cache, 2 rescored)" in eval_log, eval_log
    after = cell(project)
    assert after["cell_id"] == before["cell_id"] and after["answer"] == before["answer"]
    assert after["code"]["generate"] == before["code"]["generate"]
    assert after["code"]["score"] != before["code"]["score"]
    assert after["score"] == 1.0, proc.stdout[-2000:]


@pytest.mark.integration
def test_rescore_command_follows_scoring_code(project):
    # Cells scored by the edited rule, then the edit undone: `pausetune rescore` brings them back to today's
    # scoring without generation.
    edit(project, "core/evaluation/scoring.py", *NEVER_FOUND)
    build(project, TABLE, configs=CONFIGS)
    edit(project, "core/evaluation/scoring.py", *reversed(NEVER_FOUND))
    env_path = f"{project / 'workflow'}"
    proc = subprocess.run([sys.executable, "-m", "pausetune.cli", "rescore", "--config", *CONFIGS[:2],
                           "--cells", "results/eval"], cwd=project, capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "2 rescored" in proc.stdout
    c = cell(project)
    assert c["code"]["score"] == json.loads(
        (project / "results/.cells" / f"{c['cell_id']}.json").read_text())["code"]["score"]
    again = subprocess.run([sys.executable, "-m", "pausetune.cli", "rescore", "--config", *CONFIGS[:2],
                            "--cells", "results/eval"], cwd=project, capture_output=True, text=True,
                           env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert "0 rescored" in again.stdout, again.stdout + again.stderr


@pytest.mark.integration
def test_docstring_edits_rerun_nothing_code_edits_retrain(project):
    """A docstring or comment edit of a core module every step runs, of training's and eval's own code and of the
    train stage leaves `snakemake -n` with nothing to do, training included; a change to what training's code
    does retrains the checkpoint and nothing else."""
    targets = (TABLE, FIGURE, CHECKPOINT)
    for rel in ("core/io.py", "core/training/lora.py", "core/data/haystack.py", "stages/train.py"):
        edit(project, rel, '"""', '"""Edited. ')
        edit(project, rel, "from __future__ import annotations\n", "from __future__ import annotations\n# edited\n")
    assert plan(project, *targets, configs=CONFIGS) == {}
    edit(project, "core/training/lora.py", "from __future__ import annotations\n",
         "from __future__ import annotations\n_EDITED = 1\n")
    assert plan(project, *targets, configs=CONFIGS) == {"train": 1}


@pytest.mark.integration
def test_figures_edit_reruns_only_figures(project):
    edit(project, "stages/figures.py", "from __future__ import annotations\n",
         "from __future__ import annotations\n_EDITED = 1\n")
    planned = plan(project, TABLE, FIGURE, CHECKPOINT, configs=CONFIGS)
    assert planned == {"figure_heatmap": 1}, planned


def test_fingerprint_ignores_docstrings_and_comments(tmp_path):
    """A docstring or comment edit keeps every stage's fingerprint (so no cell or checkpoint is recomputed for it);
    a change to what the code does, however small, changes it. Checked on a copy of the package, in a subprocess."""
    import shutil

    shutil.copytree(ROOT / "workflow" / "pausetune", tmp_path / "pausetune")
    f = tmp_path / "pausetune" / "core" / "data" / "haystack.py"

    def fp() -> str:
        code = "from pausetune.core.fingerprint import fingerprint; print(fingerprint('pausetune.stages.eval'))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
        return proc.stdout.strip()

    base = fp()
    assert base == fingerprint("pausetune.stages.eval")  # the same hash from the project's own copy
    text = f.read_text()
    f.write_text(text.replace('"""', '"""Edited. ', 1).replace("\n", "\n# a comment\n", 3) + "\n# the end\n")
    assert fp() == base
    f.write_text(text + "\n_EDITED = 1\n")
    assert fp() != base


@pytest.mark.integration
def test_haystack_edit_misses_the_cache(project):
    before = cell(project)
    edit(project, "core/data/haystack.py", "from __future__ import annotations\n",
         "from __future__ import annotations\n_EDITED = 1\n")  # code: a new identity
    planned = plan(project, TABLE, configs=CONFIGS)
    assert planned.get("eval") == 1, planned
    build(project, TABLE, configs=CONFIGS)
    after = cell(project)
    assert after["code"]["generate"] != before["code"]["generate"]
    assert after["cell_id"] != before["cell_id"]  # a new cache entry: the old one is never served for this code
    assert (project / "results/.cells" / f"{before['cell_id']}.json").exists()
    assert (project / "results/.cells" / f"{after['cell_id']}.json").exists()
