"""Hostile and careless input (issue 29): names that would leave the project or run in a shell, folders the pipeline
did not write, cell files from elsewhere, model folders that a later job would refuse, values too long to quote.

Each is tried the way a user meets it: Snakemake with a config overlay in one project copy (mostly `-n` or a run
that must stop before its first job), and the `pausetune` CLI (what DVC runs). Every check asserts one error line
and that nothing outside the project copy or the test's tmp folder was created or touched.
"""
from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULT_CONFIG, ROOT, run_cli
from test_faults import CONFIGS, error_lines, ok, smk
from helpers import make_project

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy one level down in its own tmp folder, so `../victim` is the test's and nobody else's."""
    return make_project(tmp_path_factory.mktemp("hostile") / "project")


def overlay(project: Path, name: str, data: dict) -> str:
    (project / name).write_text(yaml.safe_dump(data))
    return name


def one_config_error(proc: subprocess.CompletedProcess) -> str:
    """The run stopped with exactly one `config error:` line, before Snakemake planned or ran any job."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("config error: "), out[-3000:]
    assert "Building DAG of jobs" not in out and "rule " not in out, out[-3000:]
    return lines[0]


def everything_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------ 1. names as paths
SMOLLM2_SOURCE = yaml.safe_load(DEFAULT_CONFIG.read_text())["models"]["smollm2"]["source"]


def test_a_name_that_leaves_the_project_is_refused_before_any_job(project):
    victim = project.parent / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("data\n")
    outside = lambda: {p for p in everything_under(project.parent) if not p.startswith(project.name)}
    before = outside()
    name = overlay(project, "victim.yaml", {"models": {"../victim": {"source": SMOLLM2_SOURCE}},
                                            "train": {"models": ["smollm2", "../victim"]}})
    line = one_config_error(smk(project, "--configfile", *CONFIGS, name, "--until", "prepare_model"))
    assert line == ("config error: config key 'models': expected a name: a letter or digit, then letters, digits, "
                    "'_', '.', '-' (names become folder names and shell words), got \"../victim\""), line
    # the lists that name entries are held to the same pattern (a task, a source, a model to tune)
    for key, data in [("tasks", {"tasks": {"../t": {"kind": "single", "needles": ["x"]}}}),
                      ("shards.sources.0", {"shards": {"sources": ["../../s"]}}),
                      ("train.models.0", {"train": {"models": ["a/b"]}})]:
        line = one_config_error(smk(project, "-n", "--configfile", *CONFIGS, overlay(project, "bad.yaml", data)))
        assert line.startswith(f"config error: config key '{key}': expected a name"), line
    assert (victim / "notes.txt").read_text() == "data\n" and sorted(os.listdir(victim)) == ["notes.txt"]
    assert outside() == before == {"victim", "victim/notes.txt"}


def test_cli_refuses_a_name_and_never_replaces_a_folder_it_did_not_write(project, tmp_path, tiny_dir):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("data\n")
    # the DVC route: `pausetune prepare-model --model ${key} --output data/models/${key}`
    over = json.dumps({"models": {"../victim": {"source": {"kind": "path", "path": str(tiny_dir)}}}})
    proc = run_cli("prepare-model", "--config", str(DEFAULT_CONFIG), "--config-json", over, "--model", "../victim",
                   "--output", "data/models/../victim", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("pausetune prepare-model: error: config key 'models': "
                                                           "expected a name"), proc.stderr
    # a good name, but --output a user's folder: refused before anything is created or removed there
    over = json.dumps({"models": {"p": {"source": {"kind": "path", "path": str(tiny_dir)}}}})
    proc = run_cli("prepare-model", "--config", str(DEFAULT_CONFIG), "--config-json", over, "--model", "p",
                   "--output", str(victim), check=False)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        f"pausetune prepare-model: error: {victim}: exists and was not written by pausetune (no .pausetune-output "
        f"in it); refusing to replace it as the output folder: move it away or choose another path"], proc.stderr
    assert sorted(os.listdir(victim)) == ["notes.txt"] and (victim / "notes.txt").read_text() == "data\n"
    assert sorted(os.listdir(tmp_path)) == ["victim"]
    # a folder the pipeline wrote (marked) is replaced whole
    out = tmp_path / "models" / "p"
    for stale in (True, False):
        run_cli("prepare-model", "--config", str(DEFAULT_CONFIG), "--config-json", over, "--model", "p",
                "--output", str(out))
        if stale:
            (out / "stale.txt").write_text("from the first run")
    assert sorted(os.listdir(out)) == [".pausetune-output", "prepared.json"]
    assert json.loads((out / "prepared.json").read_text())["path"] == str(tiny_dir.resolve())


# --------------------------------------------------------------------------------- 2. quoted shell commands
SHELLS = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile").resolve(),
                      config_settings=ConfigSettings(configfiles=[Path(p).resolve() for p in sys.argv[1:]]),
                      workdir=Path(".").resolve())
    print(json.dumps({r.name: r.shellcmd for r in wf._workflow.rules if r.shellcmd}))
"""


@pytest.mark.parametrize("block", ["cell", "length", "seed"])
def test_every_placeholder_in_a_shell_command_is_quoted(project, block):
    """The rules' shell commands as Snakemake holds them (f-strings resolved, the eval block's own arguments in):
    every `{...}` Snakemake fills in when a job runs is quoted with `:q`."""
    name = overlay(project, f"block_{block}.yaml", {"eval": {"block": block}})
    proc = subprocess.run([sys.executable, "-c", SHELLS, *CONFIGS, name], cwd=project, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(project / "workflow")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shells = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"download", "paragraphs", "prepare_model", "shards", "examples", "train", "eval", "eval_tuned",
            "aggregate", "figure_heatmap", "publish"} <= set(shells)
    unquoted = {rule: field for rule, cmd in shells.items() for _, field, spec, _ in string.Formatter().parse(cmd)
                if field is not None and not (spec or "").endswith("q")}
    assert unquoted == {}, unquoted


def test_shell_metacharacters_in_a_name_or_the_page_are_refused(project):
    for data in [{"sources": {"x$(touch PWNED)": {"kind": "local", "path": "essays"}},
                  "shards": {"sources": ["x$(touch PWNED)"]}, "eval": {"haystack_sources": ["x$(touch PWNED)"]}},
                 {"publish": {"page": "results/x;touch PWNED.md"}},
                 {"publish": {"page": "../page.md"}},
                 {"eval": {"device": "cpu;touch PWNED"}}]:
        line = one_config_error(smk(project, "--configfile", *CONFIGS, overlay(project, "pwn.yaml", data)))
        assert "PWNED" in line or "../page.md" in line, line
    assert not [p for p in project.parent.rglob("PWNED*")]


# ----------------------------------------------------------------------- 3. publish's folders are its own
def test_publish_refuses_a_folder_it_did_not_write(project):
    (project / "mydocs").mkdir()
    (project / "mydocs" / "notes.md").write_text("mine\n")
    for key in ("figures_dir", "tables_dir"):
        line = one_config_error(smk(project, "-n", "--configfile", *CONFIGS,
                                    overlay(project, "pub.yaml", {"publish": {key: "mydocs"}})))
        assert line == (f"config error: config key 'publish.{key}': mydocs: exists and was not written by pausetune "
                        f"(no .pausetune-output in it); refusing to replace it as the folder publish writes: move it "
                        f"away or choose another path"), line
    assert sorted(os.listdir(project / "mydocs")) == ["notes.md"]
    # the study's committed docs/figures and docs/tables carry the marker: publish's; a folder without it is not,
    # even one holding only what publish would write there (PNGs, Snakemake's timestamp)
    for folder in ("docs/figures", "docs/tables"):
        shutil.copytree(ROOT / folder, project / folder)
    ok(smk(project, "-n", "--configfile", *CONFIGS, "config/study.yaml"))
    old = project / "results" / "results_figures"
    old.mkdir(parents=True)
    for f in ("heatmap_tiny_single_baseline.png", ".snakemake_timestamp"):
        (old / f).write_bytes(b"")
    line = one_config_error(smk(project, "-n", "--configfile", *CONFIGS))
    assert "config key 'publish.figures_dir': results/results_figures: exists and was not written" in line
    assert sorted(os.listdir(old)) == [".snakemake_timestamp", "heatmap_tiny_single_baseline.png"]
    shutil.rmtree(project / "results")


# ------------------------------------------------------------------------------- 4. rescore and cell ids
def test_rescore_refuses_a_cell_whose_id_is_a_path(tmp_path):
    cache = tmp_path / "a" / "b" / ".cells"
    cache.mkdir(parents=True)
    cells = tmp_path / "a" / "b" / "eval"
    cells.mkdir()
    hostile = {"cell_id": "../../x", "answer": "The best thing is to eat a sandwich.", "facts": ["sandwich"],
               "question": "What is the best thing?"}
    for name, data, why in [
        ("depth0.json", hostile, 'cell_id "../../x": expected 64 hex digits (a sha256, as eval computes it)'),
        ("depth50.json", 5, "a JSON object expected, got 5"),
    ]:
        f = cells / name
        f.write_text(json.dumps(data))
        before = everything_under(tmp_path)
        proc = run_cli("rescore", "--config", str(DEFAULT_CONFIG), "--cells", str(f), "--cells-cache", str(cache),
                       "--force", check=False)
        assert proc.returncode == 1 and proc.stderr.splitlines() == [
            f"pausetune rescore: error: {f}: not a cell ({why})"], proc.stderr
        assert everything_under(tmp_path) == before and f.read_text() == json.dumps(data)
        f.unlink()
    # the id eval computes is taken, and the cache entry lands in the cache
    good = {**hostile, "cell_id": "0123456789abcdef" * 4}
    (cells / "depth0.json").write_text(json.dumps(good))
    run_cli("rescore", "--config", str(DEFAULT_CONFIG), "--cells", str(cells), "--cells-cache", str(cache))
    assert json.loads((cache / f"{good['cell_id']}.json").read_text())["score"] == 10.0
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------- 10. model folders a later job refuses
def model_folder(src: Path, dest: Path, pickle_only: bool = False, auto_map: bool = False) -> Path:
    """A copy of a prepared model's folder: its weights as a pickle file only, or a tokenizer of its own code
    (auto_map) that leaves a file named RAN in the working folder when it runs."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("prepared.json", ".pausetune-output"))
    if pickle_only:
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(dest / "model.safetensors"), dest / "pytorch_model.bin")
        (dest / "model.safetensors").unlink()
    if auto_map:
        (dest / "tok_own.py").write_text('open("RAN", "w").write("ran")\n'
                                         "from transformers import PreTrainedTokenizerFast\n\n\n"
                                         "class OwnTokenizer(PreTrainedTokenizerFast):\n    pass\n")
        cfg = json.loads((dest / "tokenizer_config.json").read_text())
        cfg.update(auto_map={"AutoTokenizer": [None, "tok_own.OwnTokenizer"]}, tokenizer_class="OwnTokenizer")
        (dest / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dest


def test_prepare_model_refuses_what_eval_would(project, tmp_path, tiny_dir):
    pickled = model_folder(tiny_dir, tmp_path / "pickled", pickle_only=True)
    own = model_folder(tiny_dir, tmp_path / "own", auto_map=True)
    models = {"pk": {"source": {"kind": "path", "path": str(pickled)}},
              "own": {"source": {"kind": "path", "path": str(own)}}}
    expected = {
        "pk": f"models.pk.source.path: {pickled} has no .safetensors weights (only pytorch_model.bin; pickle weights "
              f"are never loaded): convert them to safetensors first",
        "own": f"models.own.source.path: {own / 'tokenizer_config.json'} maps to code shipped in the model folder "
               f"(auto_map), which runs only under models.own.trust_remote_code: true; nothing was run",
    }
    # the CLI (DVC's route)
    for name, line in expected.items():
        proc = run_cli("prepare-model", "--config", str(DEFAULT_CONFIG), "--config-json", json.dumps(
            {"models": models}), "--model", name, "--output", str(tmp_path / "out" / name), cwd=tmp_path, check=False)
        assert proc.returncode == 1 and proc.stderr.splitlines() == [f"pausetune prepare-model: error: {line}"], \
            proc.stderr
    # Snakemake with an overlay: the prepare_model job stops with the same line, and nothing ran the folder's code
    name = overlay(project, "folders.yaml", {"models": models})
    for model, line in expected.items():
        proc = smk(project, "--configfile", *CONFIGS, name, "--", f"data/models/{model}/prepared.json")
        assert proc.returncode == 1 and f"pausetune prepare-model: error: {line}" in proc.stdout + proc.stderr, \
            (proc.stdout + proc.stderr)[-3000:]
        assert "Traceback" not in proc.stdout + proc.stderr
        assert not (project / "data" / "models" / model).exists()
    assert not (project / "RAN").exists() and not (tmp_path / "RAN").exists()
    # Trusted, the folder prepares; under `snakemake -n` the budget checks then load its tokenizer: its code runs
    # (what the README says). A folder prepared before these checks, untrusted: one line, nothing run.
    trusted = overlay(project, "trusted.yaml", {"models": {"own": {**models["own"], "trust_remote_code": True}},
                                                "eval": {"models": ["own"], "variants": ["baseline"],
                                                         "lengths": [600], "depths": [0]}})
    ok(smk(project, "--configfile", *CONFIGS, trusted, "--", "data/models/own/prepared.json"))
    assert not (project / "RAN").exists()
    ok(smk(project, "-n", "--configfile", *CONFIGS, trusted))
    assert (project / "RAN").exists()
    (project / "RAN").unlink()
    prepared = json.loads((project / "data/models/own/prepared.json").read_text())
    (project / "data/models/own/prepared.json").write_text(json.dumps({**prepared, "trust_remote_code": False}))
    line = one_config_error(smk(project, "-n", "--configfile", *CONFIGS, trusted))
    assert line == (f"config error: {own}: the model folder ships its own code (auto_map), which runs only under its "
                    f"models entry's trust_remote_code: true; nothing was run"), line
    assert not (project / "RAN").exists()
    shutil.rmtree(project / "data" / "models")


# ------------------------------------------------------------------------------- 13. values in error lines
def test_grid_size_and_long_values_in_one_short_line(project, tmp_path, tiny_config):
    line = one_config_error(smk(project, "-n", "--configfile", *CONFIGS,
                                overlay(project, "depths.yaml", {"eval": {"depths": {"num": 150}}})))
    assert line == "config error: config key 'eval.depths': num 150 gives only 101 distinct depths between min " \
                   "and max once rounded", line
    needle = " ".join(["word"] * 2000)
    triple = {"needle": needle, "question": "What?", "answer": "word"}
    line = one_config_error(smk(project, "-n", "--configfile", *CONFIGS, overlay(
        project, "long.yaml", {"banks": {"train": {"extra": [triple, triple]}}})))
    assert line.startswith("config error: config key 'banks.train': needle \"word word") and len(line) < 320, line
    assert line.endswith(f"... ({len(needle) + 2} characters) appears twice"), line
    # the hub, offline: one parenthesis, not two nested
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    over = json.dumps({"models": {"h": {"source": {"kind": "hub", "id": "nobody/no-such-model-pausetune"}}}})
    proc = subprocess.run([sys.executable, "-m", "pausetune.cli", "prepare-model", *tiny_config, "--config-json",
                           over, "--model", "h", "--output", str(tmp_path / "h")], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        "pausetune prepare-model: error: models.h: could not download 'nobody/no-such-model-pausetune' from the HF "
        "hub (the hub is unreachable: offline, or HF_HUB_OFFLINE set); download it elsewhere and use a model source "
        "of kind 'path'"], proc.stderr
