"""dvc.yaml against the Snakefile, and real `dvc repro` / `push` / `pull` runs on the tiny config.

- The two DAGs stay in step: for the default config (and the tiny one) every file Snakemake's `all` builds is a
  DVC output or lies inside a DVC directory output, of the stage named like the rule; and every DVC output
  holds at least one of Snakemake's files.
- `dvc repro` on a fresh project runs everything, a second one nothing; a changed parameter reruns exactly the
  stages that read it and their dependants.
- `dvc push`, then `dvc pull` into a fresh `git clone`, restores data and checkpoints byte for byte, and that
  clone has nothing left to reproduce.
- DVC-native results: `dvc metrics show` reads the headline numbers and the final training losses, `dvc plots
  show` renders the profiles and loss curves, and `dvc exp run -S` of one eval parameter reruns only what reads
  it, with `dvc exp show` reporting the changed metric.
DVC reads its parameters from config/config.yaml only, so each project copy writes its own config/config.yaml:
the default config with tests/configs/tiny.yaml and this file's overlay merged in.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULT_CONFIG, ROOT, TINY_CONFIG
from pausetune.core.config import deep_merge
from pausetune.core.design import DESIGN
from helpers import make_project

pytestmark = [pytest.mark.integration]

DVC_FILES = ["dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvc/plots/panels.json"]
# Everything on the tiny model, a small grid: one length, one depth, one task, one seed (one block per variant).
DVC_OVERLAY = {
    "train": {"models": ["tiny"], "max_steps": 2, "warmup_steps": 0, "save_every": 1},
    "eval": {"models": ["tiny"], "tasks": ["single"], "lengths": [1000], "depths": [50], "seeds": [0]},
}
GIT = ["git", "-c", "user.name=pausetune-tests", "-c", "user.email=tests@pausetune.invalid", "-c", "commit.gpgsign=false"]


def _env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], project, check=check)


def merged_config(*overlays: dict) -> dict:
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for o in overlays:
        cfg = deep_merge(cfg, o)
    return cfg


def tiny_config(**extra) -> dict:
    return merged_config(yaml.safe_load(TINY_CONFIG.read_text()), DVC_OVERLAY, extra)


def dvc_project(dest: Path, config: dict | None, remote: Path | None = None) -> Path:
    """A project copy as a git repo with DVC set up; config/config.yaml replaced by `config` (None: the default)."""
    make_project(dest)
    for name in DVC_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    if config is not None:
        (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run(["git", "init", "-q"], dest)
    run([*GIT, "add", "-A"], dest)
    run([*GIT, "commit", "-q", "-m", "project"], dest)
    if remote is not None:
        dvc(dest, "remote", "modify", "--local", "local", "url", str(remote))
    return dest


# ------------------------------------------------------------------------------------------ the two DAGs

DVC_OUTS = """
import json, sys
from dvc.repo import Repo
repo = Repo(".")
print(json.dumps({s.addressing: [str(o.def_path) for o in s.outs] for s in repo.index.stages}))
"""


def dvc_outs(project: Path) -> dict[str, list[str]]:
    return json.loads(run([sys.executable, "-c", DVC_OUTS], project).stdout)


def snakemake_outputs(project: Path, *configfiles: str) -> dict[str, str]:
    """file -> rule of every job Snakemake's `all` needs (`snakemake --summary`, logs excluded)."""
    args = ["--configfile", *configfiles] if configfiles else []
    proc = run([sys.executable, "-m", "snakemake", "--cores", "1", *args, "--summary"], project)
    out = {}
    for line in proc.stdout.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] != "output_file":
            out[parts[0]] = parts[2]
    assert out, proc.stdout + proc.stderr
    return out


def stage_rule(stage: str) -> str:
    """DVC stage name -> Snakemake rule: shards@tiny-pause -> shards, eval_tuned@... -> eval_tuned (the tuned
    variants' eval rule, one job set per training seed, as the stage is)."""
    return stage.split("@", 1)[0]


def assert_same_dag(smk: dict[str, str], outs: dict[str, list[str]]) -> None:
    owner = {}  # DVC out -> stage
    for stage, paths in outs.items():
        for p in paths:
            assert p not in owner, f"{p}: output of {owner[p]} and {stage}"
            owner[p.rstrip("/")] = stage
    covered = {o: [] for o in owner}
    problems = []
    for f, rule in sorted(smk.items()):
        hit = next((o for o in owner if f == o or f.startswith(o + "/")), None)
        if hit is None:
            problems.append(f"Snakemake's {f} (rule {rule}) is no DVC output")
            continue
        covered[hit].append(f)
        if stage_rule(owner[hit]) != rule:
            problems.append(f"{f}: Snakemake rule {rule}, DVC stage {owner[hit]}")
    problems += [f"DVC output {o} (stage {owner[o]}) holds none of Snakemake's files" for o, fs in covered.items()
                 if not fs]
    assert not problems, "\n".join(problems)


def test_matrix_is_the_design():
    """dvc.yaml's variant lists are core.design's (a matrix cannot be filtered: the reference arms stay out)."""
    from pausetune.core.design import CHECKPOINT, REFERENCE_ARMS

    v = yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"][1]
    assert tuple(v["variants"]) == DESIGN and v["untuned"] + [t["name"] for t in v["tuned"]] == list(DESIGN)
    assert {t["name"]: t["checkpoint"] for t in v["tuned"]} == CHECKPOINT
    assert v["delta_variants"] == [x for x in DESIGN if x != "baseline"] and not set(REFERENCE_ARMS) & set(DESIGN)


def test_dag_matches_snakemake_default_config(tmp_path):
    project = dvc_project(tmp_path / "p", None)
    smk, outs = snakemake_outputs(project), dvc_outs(project)
    assert_same_dag(smk, outs)
    rules = set(smk.values())
    assert {"download", "paragraphs", "prepare_model", "shards"} <= rules, rules


def test_dag_matches_snakemake_tiny_config(tmp_path):
    project = dvc_project(tmp_path / "p", tiny_config())
    assert_same_dag(snakemake_outputs(project), dvc_outs(project))


def test_dag_matches_snakemake_with_two_training_seeds(tmp_path):
    """train.seeds [0, 1]: examples, checkpoints and tuned cells per training seed in both tools, the untrained
    variants' cells once; the same files."""
    project = dvc_project(tmp_path / "p", tiny_config(train={"seeds": [0, 1]}))
    smk, outs = snakemake_outputs(project), dvc_outs(project)
    assert_same_dag(smk, outs)
    assert {s for s in outs if stage_rule(s) == "train"} == {f"train@tiny-{v}-{n}" for v in ("pause", "plain")
                                                              for n in (0, 1)}
    for n in (0, 1):
        assert f"results/checkpoints/tiny/pause/tseed{n}/manifest.json" in smk
        assert f"data/examples/tiny/plain/tseed{n}/manifest.json" in smk
        for v in ("pause-tuned", "plain-tuned", "pause-tuned-on-plain", "plain-tuned-on-paused"):
            assert f"results/eval/tiny/{v}/tseed{n}/single/seed0/len1000/depth50.json" in smk, v
    untrained = sorted(f for f in smk if f.startswith("results/eval/") and "/tseed" not in f)
    assert untrained == [f"results/eval/tiny/{v}/single/seed0/len1000/depth50.json" for v in ("baseline", "pause-prompt")]
    assert sorted(o for s, os_ in outs.items() if stage_rule(s) == "eval" for o in os_) == [
        "results/eval/tiny/baseline/single/seed0", "results/eval/tiny/pause-prompt/single/seed0"]


def test_dag_matches_snakemake_study_config(tmp_path):
    """The study through DVC: `pausetune config` writes config/study.yaml merged into config/config.yaml."""
    project = dvc_project(tmp_path / "p", None)
    smk_study = snakemake_outputs(project, "config/config.yaml", "config/study.yaml")
    run([sys.executable, "-m", "pausetune.cli", "config", "--config", "config/config.yaml", "config/study.yaml",
         "--output", "config/config.yaml"], project)
    smk = snakemake_outputs(project)
    assert smk == smk_study  # the merged file is the same config
    study = yaml.safe_load((project / "config" / "study.yaml").read_text())
    last, n = max(study["train"]["seeds"]), max(study["eval"]["lengths"])
    own = next(d for d in study["eval"]["task_grid"]["bank"]["depths"] if d not in study["eval"]["depths"])
    for v in ("plain-tuned", "pause-tuned-on-plain"):  # every training seed's cells, the crossed variants' too
        assert f"results/eval/smollm2/{v}/tseed{last}/bank/seed0/len{n}/depth{own}.json" in smk, v
    assert f"results/eval/smollm2/baseline/bank/seed0/len{n}/depth{own}.json" in smk  # untrained: once
    assert not any("/single/" in f and f.endswith(f"/depth{own}.json") for f in smk)  # the bank task's own grid
    assert f"data/examples/smollm2/pause/tseed{last}/manifest.json" in smk  # the retrieval objective's training data
    assert "docs/results.md" in smk
    assert_same_dag(smk, dvc_outs(project))
    # The page's config hash is the same whichever tool ran publish: Snakemake hands it the whole config as JSON,
    # DVC the merged file.
    from pausetune.core.config import load_config
    from pausetune.core.report.provenance import config_hash

    dry = run([sys.executable, "-m", "snakemake", "--cores", "1", "-n", "-p", "--forcerun", "publish", "--",
               "docs/results.md"], project).stdout
    cmd = next(line for line in dry.splitlines() if "pausetune publish" in line)
    words = shlex.split(cmd[cmd.index("pausetune publish"):])
    smk_cfg = load_config([], words[words.index("--config-json") + 1])
    assert config_hash(smk_cfg) == config_hash(load_config([str(project / "config" / "config.yaml")]))


def test_aggregate_reads_only_the_configured_grid(tmp_path):
    """results/eval may hold other grids' cells (a config run before this one): `dvc repro` of aggregate tables
    only the configured grid's, and names the others in one line. The fixture cells (lengths 1000 and 2000) under
    a grid of length 1000."""
    import pandas as pd

    grid = {"eval": {"models": ["smollm2"], "tasks": ["single"], "lengths": [1000], "depths": [0, 50, 100],
                     "seeds": [0, 1]}}
    project = dvc_project(tmp_path / "p", merged_config(grid))
    shutil.copytree(ROOT / "tests" / "fixtures" / "cells", project / "results" / "eval")
    proc = dvc(project, "repro", "--single-item", "aggregate")
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "left out" in ln]
    assert lines == ["aggregate: left out 20 cell(s) under results/eval outside the configured grid (eval.models, "
                     "variants, tasks, seeds, lengths, depths), e.g. "
                     "results/eval/smollm2/baseline/single/seed0/len2000/depth0.json"], proc.stdout[-3000:]
    cells = pd.read_parquet(project / "results/tables/cells.parquet")
    assert len(cells) == 21 and set(cells["length"]) == {1000}  # plain-tuned has seed 0 only
    assert json.loads((project / "results/tables/manifest.json").read_text())["cells"] == 21


# ------------------------------------------------------------------------------------------ real runs

def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def data_files(project: Path) -> dict[str, str]:
    files = {}
    for top in ("data", "results"):
        for p in sorted((project / top).rglob("*")):
            skip = any(part == ".cells" or part.endswith(".state") for part in p.parts) or \
                p.relative_to(project).parts[:2] == ("results", "timing")  # measurements, not DVC outputs
            if p.is_file() and not skip:
                files[str(p.relative_to(project))] = md5(p)
    return files


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """A tiny project, `dvc repro`-ed once; timings kept for the report.

    Its page and figures sit where the study's do, in docs/ and committed to git (DVC must not cache them)."""
    base = tmp_path_factory.mktemp("dvc")
    page = {"publish": {"page": "docs/results.md", "figures_dir": "docs/figures", "tables_dir": "docs/tables"}}
    project = dvc_project(base / "project", tiny_config(**page), remote=base / "remote")
    (project / "docs" / "figures").mkdir(parents=True, exist_ok=True)
    (project / "docs" / "results.md").write_text("# an earlier page\n")
    (project / "docs" / "figures" / "old.png").write_bytes(b"not a png")
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-q", "-m", "an earlier page"], project)
    t0 = time.time()
    first = dvc(project, "repro")
    return {"project": project, "base": base, "first": first, "first_s": time.time() - t0}


def test_repro_runs_everything_then_nothing(repro):
    project, first = repro["project"], repro["first"]
    outs = dvc_outs(project)
    assert ran_stages(first.stdout) == set(outs), (sorted(set(outs) - ran_stages(first.stdout)), first.stdout[-3000:])
    # every file Snakemake's `all` would build is there
    for f in snakemake_outputs(project):
        assert (project / f).exists(), f
    t0 = time.time()
    again = dvc(project, "repro")
    assert not ran_stages(again.stdout), again.stdout
    assert "Data and pipelines are up to date" in again.stdout, again.stdout
    status = dvc(project, "status")
    assert "up to date" in status.stdout, status.stdout
    page = (project / "docs" / "results.md").read_text()
    assert page.startswith("# pausetune results") and "an earlier page" not in page, page[:300]
    assert not (project / "docs" / "figures" / "old.png").exists()  # the figures directory is the run's
    assert sorted(p.name for p in (project / "docs" / "figures").glob("*.png")), "no figures published"
    print(f"\ndvc repro: first {repro['first_s']:.0f}s ({len(outs)} stages), second {time.time() - t0:.1f}s")


def test_code_edit_marks_exactly_the_stages_that_run_it(repro):
    """dvc.yaml deps are the import closures: an edit to scoring.py makes the eval stages stale, nothing else."""
    project = repro["project"]
    f = project / "workflow" / "pausetune" / "core" / "evaluation" / "scoring.py"
    before = f.read_text()
    try:
        f.write_text(before + "\n# an edit\n")
        stale = set(re.findall(r"^(\S+):\s*$", dvc(project, "status").stdout, re.M))
        evals = {s for s in dvc_outs(project) if stage_rule(s) in ("eval", "eval_tuned")}
        assert evals and stale == evals, sorted(stale ^ evals)
        f.write_text(before)
        fig = project / "workflow" / "pausetune" / "stages" / "figures.py"
        text = fig.read_text()
        fig.write_text(text + "\n# an edit\n")
        stale = set(re.findall(r"^(\S+):\s*$", dvc(project, "status").stdout, re.M))
        fig.write_text(text)
        assert stale and all(stage_rule(s).startswith("figure") for s in stale), sorted(stale)
    finally:
        f.write_text(before)
    assert "up to date" in dvc(project, "status").stdout


def test_max_context_reruns_only_the_tables_and_the_page(repro):
    """models.X.max_context gates the DAG-time checks and sets u_shape.csv's half-window scope: aggregate and
    publish (whose page shows the whole config's hash) go stale when it changes, nothing upstream of them."""
    project = repro["project"]
    cfg_path = project / "config" / "config.yaml"
    before = cfg_path.read_text()
    try:
        cfg = yaml.safe_load(before)
        cfg["models"]["tiny"]["max_context"] = 3000
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        stale = set(re.findall(r"^(\S+):\s*$", dvc(project, "status").stdout, re.M))
        assert stale == {"aggregate", "publish"}, sorted(stale)
    finally:
        cfg_path.write_text(before)


def test_wrong_wheel_hash_keeps_the_good_parquet(repro):
    """A wrong sha256 fails the download stage in one line; DVC does not delete the output first (persist)."""
    project = repro["project"]
    cfg_path = project / "config" / "config.yaml"
    raw = project / "data" / "raw" / "paul_graham.parquet"
    before, good = cfg_path.read_text(), md5(raw)
    try:
        cfg = yaml.safe_load(before)
        cfg["sources"]["paul_graham"]["sha256"] = "0" * 64
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        proc = dvc(project, "repro", "download@paul_graham", check=False)
        assert proc.returncode != 0
        assert "sha256" in proc.stdout + proc.stderr and "0" * 64 in proc.stdout + proc.stderr
        assert raw.exists() and md5(raw) == good
    finally:
        cfg_path.write_text(before)
    assert "download@paul_graham" not in dvc(project, "status").stdout


def test_param_change_reruns_only_dependants(repro):
    project = repro["project"]
    cfg_path = project / "config" / "config.yaml"
    before = cfg_path.read_text()
    try:
        cfg = yaml.safe_load(before)
        cfg["paragraphs"]["min_words"] = 20
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        outs = dvc_outs(project)
        # What reads `paragraphs`: the paragraphs step, shards, examples and publish (the recipe). DVC's dry run shows
        # only stages whose own params or deps changed; what follows from new outputs shows after they are built.
        readers = {s for s in outs if stage_rule(s) in ("paragraphs", "shards", "examples", "publish")}
        dry = ran_stages(dvc(project, "repro", "--dry").stdout)
        assert dry == readers, sorted(dry ^ readers)
        # Rerun them: `dvc repro shards` runs the paragraphs step and the shards and nothing upstream of them.
        part = dvc(project, "repro", "shards")
        assert ran_stages(part.stdout) == {s for s in readers if stage_rule(s) in ("paragraphs", "shards")}, part.stdout
        assert "'download@paul_graham' didn't change" in part.stdout, part.stdout
        assert "'prepare_model@tiny' didn't change" in part.stdout, part.stdout
        # The new shards make everything downstream of them stale, the download and the models stay fresh.
        stale = set(re.findall(r"^(\S+):\s*$", dvc(project, "status").stdout, re.M))
        downstream = {s for s in outs if stage_rule(s) not in ("download", "prepare_model", "paragraphs", "shards")}
        # (examples read the paragraphs too: stale now, rebuilt by the full repro below)
        direct = {s for s in downstream if stage_rule(s) == "train"}  # train reads the shards directly
        assert direct <= stale <= downstream, (sorted(stale), sorted(downstream))
    finally:
        cfg_path.write_text(before)
        back = dvc(project, "repro")  # the committed parameters again: DVC's run cache restores paragraphs and shards
    assert not ran_stages(dvc(project, "repro", "--dry").stdout)
    assert not {s for s in ran_stages(back.stdout) if stage_rule(s) == "train"}, back.stdout  # same shards again


def test_push_then_pull_into_fresh_clone(repro):
    project, base = repro["project"], repro["base"]
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-q", "-m", "dvc.lock"], project)
    push = dvc(project, "push")
    assert re.search(r"\d+ files? pushed", push.stdout), push.stdout
    assert any((base / "remote").rglob("*")), "remote is empty"
    want = data_files(project)
    assert any(k.startswith("data/shards/") for k in want) and any(k.startswith("data/raw/") for k in want)

    clone = base / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], base)
    assert not (clone / "data" / "raw").exists()
    dvc(clone, "remote", "modify", "--local", "local", "url", str(base / "remote"))
    t0 = time.time()
    dvc(clone, "pull")
    got = data_files(clone)
    assert got == want, sorted(set(got.items()) ^ set(want.items()))[:10]
    status = dvc(clone, "status")
    assert "up to date" in status.stdout, status.stdout
    assert not ran_stages(dvc(clone, "repro", "--dry").stdout)
    print(f"\ndvc pull into a fresh clone: {time.time() - t0:.1f}s, {len(got)} files")


# ------------------------------------------------------------------------------------------ metrics, plots, experiments

def test_metrics_show(repro):
    project = repro["project"]
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    files = shown[""]["data"] if "" in shown else next(iter(shown.values()))["data"]
    summary = files["results/tables/summary.json"]["data"]
    cells = json.loads((project / "results/tables/summary.json").read_text())
    assert summary == cells  # DVC shows exactly what aggregate wrote
    for v in DESIGN:  # DVC evaluates the whole design (its matrix)
        assert isinstance(summary[f"tiny/{v}/single/mean_score"], (int, float))
        assert summary[f"tiny/{v}/single/n"] == 1
    for key in ("pct_vs_baseline", "pct_ci_low", "pct_ci_high", "pct_vs_plain-tuned", "pct_vs_plain-tuned_ci_low"):
        assert f"tiny/pause-tuned/single/{key}" in summary, key
    for v in ("pause", "plain"):
        m = files[f"results/metrics/train/tiny/{v}/tseed0.json"]["data"]
        manifest = json.loads((project / f"results/checkpoints/tiny/{v}/tseed0/manifest.json").read_text())
        assert m["steps"] == 2 and m["final_train_loss"] == pytest.approx(manifest["final_train_loss"], abs=1e-6)


def test_plots_show(repro, tmp_path):
    project = repro["project"]
    shown = json.loads(dvc(project, "plots", "show", "--json").stdout)["data"]
    want = {"results/tables/depth_profile.csv", "results/tables/length_profile.csv",
            "results/metrics/train/tiny/pause/tseed0_loss.csv", "results/metrics/train/tiny/plain/tseed0_loss.csv"}
    assert want <= set(shown), sorted(shown)
    depth = shown["results/tables/depth_profile.csv"][0]["content"]
    assert depth["spec"]["encoding"]["x"]["field"] == "depth" and depth["facet"]["column"]["field"] == "panel"
    rows = depth["data"]["values"]
    assert {r["series"] for r in rows} == set(DESIGN)
    loss = shown["results/metrics/train/tiny/pause/tseed0_loss.csv"][0]["content"]["data"]["values"]
    assert [r["series"] for r in loss].count("train") == 2 and [r["series"] for r in loss].count("validation") == 1
    out = tmp_path / "plots"
    dvc(project, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "depth_profile.csv" in html and "tseed0_loss.csv" in html


def test_experiment_one_param(repro, tmp_path):
    """`dvc exp run -S` of train.max_steps: training and what follows rerun (every tuned variant's cells, the crossed
    ones too), the data stages and untuned evals not.
    Run up to the tables (target `aggregate`): the figures and the page read only the tables, so rerunning them
    would repeat the repro fixture's work; they must then be exactly what `dvc status` calls stale.
    On a copy of the repro project: an experiment leaves its results in the workspace, which the module's other
    tests (in any order) read as the committed run's."""
    project = shutil.copytree(repro["project"], tmp_path / "project", symlinks=True)
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-q", "--allow-empty", "-m", "before the experiment"], project)
    outs = dvc_outs(project)
    exp = dvc(project, "exp", "run", "-n", "three-steps", "-S", "config/config.yaml:train.max_steps=3", "aggregate")
    ran = ran_stages(exp.stdout)
    readers = {s for s in outs if stage_rule(s) in ("train", "eval_tuned", "aggregate", "figure_heatmap",
                                                    "figure_delta", "figure_delta_vs", "figure_profile",
                                                    "figure_logprob", "figure_logprob_delta",
                                                    "figure_logprob_delta_vs", "figure_mechanism", "figure_seeds",
                                                    "figure_distance", "publish")}
    assert len({s for s in readers if stage_rule(s) == "eval_tuned"}) == 4  # pause, plain and both crossed
    upstream = {s for s in readers if stage_rule(s) in ("train", "eval_tuned", "aggregate")}
    assert ran == upstream, (sorted(ran ^ upstream), exp.stdout[-3000:])
    stale = set(re.findall(r"^(\S+):\s*$", dvc(project, "status").stdout, re.M))
    assert stale == readers - upstream, sorted(stale ^ (readers - upstream))  # every figure and the page, only they
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    text = json.dumps(shown)

    def find(node, name):
        """The experiment's record (DVC 3 nests commit -> experiments -> revs)."""
        if isinstance(node, dict):
            if node.get("name") == name and "data" in node:
                return node
            return next((r for v in node.values() if (r := find(v, name))), None)
        if isinstance(node, list):
            return next((r for v in node if (r := find(v, name))), None)
        return None

    rec = find(shown, "three-steps")
    assert rec is not None, text[:3000]
    assert rec["data"]["params"]["config/config.yaml"]["data"]["train"]["max_steps"] == 3
    metrics = rec["data"]["metrics"]
    assert metrics["results/metrics/train/tiny/pause/tseed0.json"]["data"]["steps"] == 3  # the changed metric
    committed = next(e for e in shown if e.get("rev") != "workspace")  # the commit the experiment started from
    before = committed["data"]["metrics"]["results/metrics/train/tiny/pause/tseed0.json"]["data"]
    assert before["steps"] == 2 and before["final_train_loss"] != metrics[
        "results/metrics/train/tiny/pause/tseed0.json"]["data"]["final_train_loss"]
