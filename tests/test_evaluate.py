"""Stage `eval` end to end on the tiny model: cells, determinism, skip/cache, variants, errors, OOM, judge, Snakemake.

Most runs call the CLI in-process (`pausetune.cli.main`, the same code path, without paying for a fresh import
of torch each time); one block runs as a real subprocess, and one test drives the real `snakemake`.
"""
from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import DEFAULT_CONFIG, ROOT, TINY_CONFIG, cli_in_process, run_cli

torch = pytest.importorskip("torch")

CFG = ["--config", str(DEFAULT_CONFIG), str(TINY_CONFIG)]
SMALL = {"eval": {"models": ["tiny"], "lengths": [600], "depths": [0, 50, 100], "prefill_chunk": 128}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_engine.py: 2 threads on a shared 2-core machine spin
    yield
    torch.set_num_threads(old)


cli = cli_in_process  # `pausetune ...` in-process on CFG; (rc, stderr)


def eval_args(tiny_dir, pg_paragraphs, results, variant="baseline", lengths=("600",), depths=("0", "50", "100"),
              task="single", extra=()):
    return ["eval", "--model", "tiny", "--variant", variant, "--tasks", task, "--seed", "0", "--lengths", *lengths,
            "--depths", *depths, "--model-dir", str(tiny_dir), "--haystack", str(pg_paragraphs),
            "--results", str(results), "--device", "cpu", "--threads", "1", *extra]


def cells_of(results: Path) -> dict[str, dict]:
    return {str(p.relative_to(results)): json.loads(p.read_text()) for p in sorted((results / "eval").rglob("*.json"))}


def timings_of(results: Path) -> dict[str, dict]:
    return {str(p.relative_to(results / "timing")): json.loads(p.read_text())
            for p in sorted((results / "timing").rglob("*.json"))}


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, tiny_dir, pg_paragraphs):
    """One block (tiny, baseline, single, seed 0, len 600, depths 0/50/100) through the real CLI subprocess."""
    results = tmp_path_factory.mktemp("results")
    proc = run_cli(*eval_args(tiny_dir, pg_paragraphs, results)[:1], *CFG, "--config-json", json.dumps(SMALL),
                   *eval_args(tiny_dir, pg_paragraphs, results)[1:])
    return results, proc


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_dir, tiny_shards):
    out = tmp_path_factory.mktemp("ckpt")
    fast = {"train": {"models": ["tiny"], "max_steps": 2, "warmup_steps": 0, "batch_size": 2, "grad_accum": 1,
                      "eval_rows": 2, "save_every": 100}}
    ckpts = {}
    for v in ("pause", "plain"):
        ckpts[v] = out / "tiny" / v
        rc, err = cli("train", "--model", "tiny", "--variant", v, "--model-dir", str(tiny_dir), "--shards",
                      str(tiny_shards[v]), "--output", str(ckpts[v]), "--device", "cpu", "--threads", "1",
                      "--no-progress", "--metrics", str(out / "metrics" / f"{v}.json"),
                      "--loss-curve", str(out / "metrics" / f"{v}_loss.csv"), config_json=fast)
        assert rc == 0, err
    return ckpts


def test_train_writes_dvc_metrics_and_loss_curve(checkpoints):
    """`train --metrics/--loss-curve`: flat final losses and the per-step curve, read back from the checkpoint."""
    for v, ck in checkpoints.items():
        manifest = json.loads((ck / "manifest.json").read_text())
        metrics = json.loads((ck.parent.parent / "metrics" / f"{v}.json").read_text())
        assert metrics["steps"] == 2 and metrics["final_train_loss"] == pytest.approx(manifest["final_train_loss"])
        assert metrics["final_val_loss"] == pytest.approx(manifest["final_val_loss"])
        log = [json.loads(line) for line in (ck / "train_log.jsonl").read_text().splitlines()]
        lines = (ck.parent.parent / "metrics" / f"{v}_loss.csv").read_text().splitlines()
        assert lines[0] == "panel,series,step,loss" and len(lines) == 1 + len(log)
        assert lines[1].startswith(f"tiny/{v},train,1,") and lines[-1].startswith(f"tiny/{v},validation,2,")


def test_cli_block_writes_complete_cells(baseline_run, tiny_dir):
    results, proc = baseline_run
    cells = cells_of(results)
    assert sorted(cells) == [f"eval/tiny/baseline/single/seed0/len600/depth{d}.json" for d in (0, 100, 50)]
    c = cells["eval/tiny/baseline/single/seed0/len600/depth50.json"]
    for key in ("model", "variant", "task", "seed", "length", "depth", "context_tokens", "haystack_tokens",
                "needle_positions", "depth_actual", "question", "expected", "answer", "score", "recall", "exact",
                "prompt_sha256", "haystack", "adapter_sha256", "versions", "cell_id"):
        assert key in c, key
    assert "timing" not in c  # what the run measured lies beside the cell, in results/timing
    assert (c["model"], c["variant"], c["task"], c["seed"], c["length"], c["depth"]) == \
        ("tiny", "baseline", "single", 0, 600, 50)
    assert c["context_tokens"] <= 600 - 32 and c["haystack_tokens"] == 600 - 200 - c["needle_tokens"]
    assert 1 <= c["score"] <= 10 and 0 <= c["recall"] <= 1 and c["adapter_sha256"] is None
    assert set(c["versions"]) == {"torch", "transformers", "peft", "pausetune"}
    timings = timings_of(results)
    assert sorted(timings) == [f"tiny/baseline/single/seed0/len600/depth{d}.json" for d in (0, 100, 50)]
    tm = timings["tiny/baseline/single/seed0/len600/depth50.json"]
    assert set(tm) >= {"cell_id", "device", "prefill_s", "decode_s", "prompt_tokens", "new_tokens",
                       "shared_prefix_tokens"} and tm["cell_id"] == c["cell_id"] and tm["device"] == "cpu"
    assert c["haystack"]["paused"] is False and c["haystack"]["paragraph_method"] == "heuristic"
    assert cells["eval/tiny/baseline/single/seed0/len600/depth0.json"]["needle_positions"][0] < c["needle_positions"][0]
    # the three cells shared the haystack prefix: two of them reused whole chunks (eval.prefill_chunk) of it
    reused = [x["shared_prefix_tokens"] for x in timings.values()]
    assert sorted(reused)[1] > 100 and all(n % 128 == 0 for n in reused)
    assert "3 computed" in proc.stderr


def test_cells_carry_measures(baseline_run, tiny_dir, pg_paragraphs, tmp_path):
    """eval.measure (default on): answer log-prob, rank, margin and per-layer attention shares in every cell;
    switched off, the cell has none of them and a different cell_id (old and new cells never mix)."""
    results, _ = baseline_run
    c = cells_of(results)["eval/tiny/baseline/single/seed0/len600/depth50.json"]
    assert c["eval"]["measure"] == ["logprob", "attention"]
    assert c["answer_texts"] == c["needles"] and len(c["answer_logprob"]) == 1 and c["answer_logprob"][0] < 0
    assert c["answer_logprob_mean"] == pytest.approx(sum(c["answer_token_logprobs"][0]), abs=1e-5)
    assert c["needle_rank"][0] >= 0 and (c["needle_margin"][0] >= 0) == (c["needle_rank"][0] == 0)
    a = c["attention"]
    assert a["layers"] == 2 and len(a["needle"]) == 2 and a["sink_tokens"] == 4
    for i in range(2):
        assert sum(a[k][i] for k in ("needle", "pause", "sink", "rest")) == pytest.approx(1, abs=1e-6)
    assert a["pause"] == [0, 0] and c["pause_attention"] == 0  # baseline: no pause tokens
    assert a["needle_token_share"] == pytest.approx(c["needle_tokens"] / c["context_tokens"], abs=1e-6)
    assert c["needle_attention"] == pytest.approx(sum(a["needle"]) / 2, abs=1e-6)
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, depths=("50",)),
                  config_json={"eval": {**SMALL["eval"], "measure": []}})
    assert rc == 0 and "1 computed" in err, err
    off = cells_of(tmp_path)["eval/tiny/baseline/single/seed0/len600/depth50.json"]
    assert off["cell_id"] != c["cell_id"] and off["answer"] == c["answer"]
    assert not {"answer_logprob", "attention", "needle_attention"} & set(off)


def test_variable_tracking_cells(tiny_dir, pg_paragraphs, tmp_path):
    """The RULER variable-tracking kind through the stage: chain needles in a paused haystack, one log-prob per
    variable name, the attention share over the chain."""
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, variant="pause-prompt", task="vartrack",
                             depths=("40",)), config_json=SMALL)
    assert rc == 0, err
    c = cells_of(tmp_path)["eval/tiny/pause-prompt/vartrack/seed0/len600/depth40.json"]
    names = c["ruler"]["chains"][c["ruler"]["asked"][0]]
    assert c["kind"] == "variable_tracking" and c["facts"] == names and len(names) == 5
    assert c["expected"] == [[n] for n in names] and len(c["answer_logprob"]) == 5
    assert c["needle_positions"] == sorted(c["needle_positions"])
    assert c["pause_attention"] > 0 and c["attention"]["pause_token_share"] > 0


def test_rerun_is_byte_identical(baseline_run, tiny_dir, pg_paragraphs, tmp_path):
    """Another process: the same cell files, byte for byte; only the timings differ. Another decode width
    (eval.batch_size) is another cell: its GEMM shapes round otherwise, so its id says so."""
    results, _ = baseline_run
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path), config_json=SMALL)
    assert rc == 0, err
    a = sorted((results / "eval").rglob("*.json"))
    b = sorted((tmp_path / "eval").rglob("*.json"))
    assert [p.relative_to(results) for p in a] == [p.relative_to(tmp_path) for p in b] and len(a) == 3
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes(), x.name
    assert timings_of(results).keys() == timings_of(tmp_path).keys()
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path / "b1", extra=["--batch-size", "1"]), config_json=SMALL)
    assert rc == 0, err
    one = cells_of(tmp_path / "b1")
    assert all(one[k]["cell_id"] != c["cell_id"] and one[k]["eval"]["batch_size"] == 1 for k, c in cells_of(results).items())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_resumed_or_recut_block_gives_the_same_bytes(tiny_dir, pg_paragraphs, tmp_path, dtype):
    """Issue #29: a block killed after two cells and resumed, and the same cells evaluated one per job (eval.block
    cell), equal the uninterrupted block byte for byte (cells and cache entries) in fp32 and in bf16: a cell's
    numbers never depend on which cells shared its job."""
    small = {"eval": {**SMALL["eval"], "dtype": dtype, "prefill_chunk": 128, "batch_size": 3}}
    lengths, depths = ("600", "1200"), ("0", "30", "60", "100")

    def run(results, ls=lengths, ds=depths):
        rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, results, lengths=ls, depths=ds), config_json=small)
        assert rc == 0, err
        return err

    run(tmp_path / "whole")
    whole = cells_of(tmp_path / "whole")
    assert len(whole) == 8 and all(c["dtype"] == dtype for c in whole.values())
    run(tmp_path / "resumed", ls=("600",), ds=("0", "30"))  # killed after two cells: those two are kept
    assert "6 computed, 0 from cache, 2 already done" in run(tmp_path / "resumed")
    for n in lengths:
        for d in depths:
            run(tmp_path / "cells", ls=(n,), ds=(d,))
    for other in ("resumed", "cells"):
        got = cells_of(tmp_path / other)
        assert got.keys() == whole.keys()
        for k in whole:
            assert got[k] == whole[k], (other, k)
            assert (tmp_path / other / k).read_bytes() == (tmp_path / "whole" / k).read_bytes(), (other, k)


def test_skip_done_and_reuse_cache(baseline_run, tiny_dir, pg_paragraphs, tmp_path):
    import shutil

    results = tmp_path / "results"  # a copy: the cells rewritten below must not reach the other tests' reads
    shutil.copytree(baseline_run[0], results)
    target = results / "eval/tiny/baseline/single/seed0/len600/depth50.json"
    before = target.read_bytes()
    target.unlink()  # what Snakemake does to a failed job's outputs
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, results), config_json=SMALL)
    assert rc == 0 and "nothing to do (2 done, 1 from the cell cache)" in err, err
    assert target.read_bytes() == before
    # so is another thread count (a CPU GEMM's reduction is split by thread): recomputed, identity says which
    target.unlink()
    import torch

    old = torch.get_num_threads()
    try:
        rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, results, depths=("50",), extra=("--threads", "2")),
                      config_json=SMALL)
    finally:
        torch.set_num_threads(old)
    assert rc == 0 and "1 computed" in err, err
    two = json.loads(target.read_text())
    assert two["cell_id"] != json.loads(before)["cell_id"] and two["kernels"]["threads"] == 2
    assert json.loads(before)["kernels"]["threads"] == 1
    # a change that alters answers (max_new_tokens) is a different cell: recomputed, not taken from the cache
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, results, depths=("50",)),
                  config_json={"eval": {**SMALL["eval"], "max_new_tokens": 8}})
    assert rc == 0 and "1 computed" in err, err
    assert json.loads(target.read_text())["answer_tokens"] <= 8


def test_pause_prompt_variant(tiny_dir, pg_paragraphs, tmp_path, baseline_run):
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, variant="pause-prompt", depths=("50",)),
                  config_json=SMALL)
    assert rc == 0, err
    c = cells_of(tmp_path)["eval/tiny/pause-prompt/single/seed0/len600/depth50.json"]
    base = cells_of(baseline_run[0])["eval/tiny/baseline/single/seed0/len600/depth50.json"]
    assert c["haystack"]["paused"] is True and c["haystack"]["pause_mode"] == "special"
    assert c["haystack"]["pause_ids"] == [49152] and c["prompt_sha256"] != base["prompt_sha256"]
    assert c["haystack"]["order_sha256"] == base["haystack"]["order_sha256"]  # same essays, same order
    assert c["pause_attention"] > 0 and c["attention"]["pause_token_share"] > 0  # the pauses draw attention


def test_tuned_variants(tiny_dir, pg_paragraphs, tmp_path, checkpoints, tiny_shards):
    from pausetune.core.training.checkpoints import checkpoint_adapter_hash

    for variant, v in (("pause-tuned", "pause"), ("plain-tuned", "plain")):
        extra = ["--checkpoint", str(checkpoints[v]), "--shard-manifest", str(tiny_shards[v] / "manifest.json")]
        rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, variant=variant, depths=("50",), extra=extra),
                      config_json=SMALL)
        assert rc == 0, err
        # no --train-seed: train.seeds' first (0), the checkpoint's; its cells one folder below the variant
        c = cells_of(tmp_path)[f"eval/tiny/{variant}/tseed0/single/seed0/len600/depth50.json"]
        assert c["adapter_sha256"] == checkpoint_adapter_hash(checkpoints[v]) and c["train_seed"] == 0
        assert c["haystack"]["paused"] is (v == "pause")
    # a tuned variant without its checkpoint, or with the other one: one line each
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, variant="pause-tuned", depths=("0",)),
                  config_json=SMALL)
    assert rc == 1 and "--checkpoint" in err and err.count("\n") == 1
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, variant="pause-tuned", depths=("0",),
                             extra=["--checkpoint", str(checkpoints["plain"])]), config_json=SMALL)
    assert rc == 1 and "a 'plain' checkpoint" in err and err.count("\n") == 1
    # a training seed: one of train.seeds, the checkpoint's own, and only for a tuned variant
    for variant, extra, message in [
            ("pause-tuned", ["--train-seed", "1", "--checkpoint", str(checkpoints["pause"])],
             "--train-seed 1: not in config key 'train.seeds' [0]"),
            ("baseline", ["--train-seed", "0"], "eval baseline: --train-seed is for tuned variants")]:
        rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path / "seeds", variant=variant, depths=("0",),
                                 extra=extra), config_json=SMALL)
        assert rc == 1 and message in err and err.count("\n") == 1, err
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path / "seeds", variant="pause-tuned", depths=("0",),
                             extra=["--train-seed", "1", "--checkpoint", str(checkpoints["pause"])]),
                  config_json={**SMALL, "train": {"seeds": [0, 1]}})
    assert rc == 1 and "trained with training seed 0, these cells are of training seed 1" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "seeds" / "eval").exists()
    # a pause checkpoint read with other pause settings than it was trained with (the CLI or DVC route: Snakemake
    # would retrain it): one line, before any cell
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path / "other", variant="pause-tuned", depths=("0",),
                             extra=["--checkpoint", str(checkpoints["pause"])]),
                  config_json={**SMALL, "pause": {"token": "<WAIT>"}})
    assert rc == 1 and "made with pause" in err and "'<WAIT>'" in err and err.count("\n") == 1, err
    assert not (tmp_path / "other" / "eval").exists()


def test_crossed_variants_load_one_arms_weights_on_the_other_arms_haystack(tiny_dir, pg_paragraphs, tmp_path,
                                                                          checkpoints, tiny_shards):
    """pause-tuned-on-plain: the pause checkpoint's adapter on the plain haystack, no pause token in its prompt (the
    plain-tuned cell's very prompt); plain-tuned-on-paused: the plain adapter on the paused haystack (pause-tuned's
    prompt, the pause token added to the plain checkpoint's tokenizer as pause-prompt adds it). Checked on the cells'
    records and on the prompts rebuilt token by token."""
    from transformers import AutoTokenizer

    from pausetune.core.config import load_config
    from pausetune.core.data.haystack import build_stream, essay_order, haystack_ids, load_essays
    from pausetune.core.evaluation.cells import build_prompts
    from pausetune.core.tokens import setup_pause
    from pausetune.core.training.checkpoints import checkpoint_adapter_hash

    arms = {"pause-tuned": "pause", "plain-tuned": "plain", "pause-tuned-on-plain": "pause",
            "plain-tuned-on-paused": "plain"}
    for variant, v in arms.items():
        extra = ["--train-seed", "0", "--checkpoint", str(checkpoints[v]), "--shard-manifest",
                 str(tiny_shards[v] / "manifest.json")]
        rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, variant=variant, depths=("50",), extra=extra),
                      config_json=SMALL)
        assert rc == 0, err
    cells = {variant: cells_of(tmp_path)[f"eval/tiny/{variant}/tseed0/single/seed0/len600/depth50.json"]
             for variant in arms}
    adapter = {v: checkpoint_adapter_hash(checkpoints[v]) for v in ("pause", "plain")}
    assert adapter["pause"] != adapter["plain"]
    on_plain, on_paused = cells["pause-tuned-on-plain"], cells["plain-tuned-on-paused"]
    # the weights: each crossed variant records the adapter of the checkpoint it names
    assert on_plain["adapter_sha256"] == adapter["pause"] == cells["pause-tuned"]["adapter_sha256"]
    assert on_paused["adapter_sha256"] == adapter["plain"] == cells["plain-tuned"]["adapter_sha256"]
    # the haystack: the other arm's, prompt for prompt
    assert on_plain["haystack"]["paused"] is False and "pause_ids" not in on_plain["haystack"]
    assert on_plain["prompt_sha256"] == cells["plain-tuned"]["prompt_sha256"] != cells["pause-tuned"]["prompt_sha256"]
    assert on_plain["pause_attention"] == 0 and on_plain["attention"]["pause_token_share"] == 0
    pause_ids = cells["pause-tuned"]["haystack"]["pause_ids"]
    assert on_paused["haystack"]["paused"] is True and on_paused["haystack"]["pause_ids"] == pause_ids
    assert on_paused["prompt_sha256"] == cells["pause-tuned"]["prompt_sha256"]
    assert on_paused["pause_attention"] > 0 and on_paused["attention"]["pause_token_share"] > 0
    assert len({c["cell_id"] for c in cells.values()}) == 4

    # the prompts rebuilt from each checkpoint's tokenizer, as the stage builds them
    config = load_config([str(DEFAULT_CONFIG), str(TINY_CONFIG)], json.dumps(SMALL))
    essays = load_essays([str(pg_paragraphs)])
    order = essay_order(haystack_ids([e for e, _ in essays], config), 0)
    for variant, paused in (("pause-tuned-on-plain", False), ("plain-tuned-on-paused", True)):
        tok = AutoTokenizer.from_pretrained(checkpoints[arms[variant]] / "tokenizer")
        pid = setup_pause(tok, config["pause"]) if paused else None
        stream = build_stream(tok, dict(essays), order, 600, pid)
        _, [(_, cp)] = build_prompts(tok, config, "tiny", stream, 0, [("single", 600, 50.0)], pid)
        assert cp.sha256() == cells[variant]["prompt_sha256"], variant
        marker = tok.convert_tokens_to_ids(config["pause"]["token"])
        assert marker == pause_ids[0]  # the pause checkpoint's tokenizer knows the token; the plain one got it added
        assert (marker in cp.ids) is paused, variant


@pytest.mark.parametrize("change, message", [
    ({"variant": "tuned"}, "unknown variant 'tuned'"),
    ({"depths": ("150",)}, "config key 'eval.depths': depth 150 is outside 0-100"),
    ({"lengths": ("4090",)}, "config key 'eval.lengths': length 4090 + eval.max_new_tokens 32 exceeds"),
    ({"task": "nope"}, "config key 'eval.tasks': unknown task 'nope'"),
    ({"lengths": ("220",)}, "config key 'eval.lengths': length 220 leaves no haystack"),
])
def test_bad_inputs_one_line(tiny_dir, pg_paragraphs, tmp_path, change, message):
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, **change), config_json=SMALL)
    assert rc == 1 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "eval").exists()


def test_oom_fails_block_naming_length_and_keeps_done_cells(tiny_dir, pg_paragraphs, tmp_path, monkeypatch):
    from pausetune.core.evaluation import engine
    from pausetune.core.config import load_config
    from pausetune.stages.eval import run_block
    from pausetune.core.io import PausetuneError

    real_run = engine.Engine.run

    def run(self, requests):
        for res in real_run(self, requests):
            if len(res.key) and any(r.key == res.key and len(r.ids) > 700 for r in requests):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            yield res

    monkeypatch.setattr(engine.Engine, "run", run)
    config = load_config([str(DEFAULT_CONFIG), str(TINY_CONFIG)], json.dumps(SMALL))
    with pytest.raises(PausetuneError) as e:
        run_block(config, model="tiny", variant="baseline", cells=[("single", 600, 0.0), ("single", 1200, 0.0)],
                  seed=0, model_dir=tiny_dir, haystack=[str(pg_paragraphs)], results=str(tmp_path),
                  device="cpu", log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith("out of memory at length 1200 (eval.batch_size 4") and "\n" not in msg
    done = cells_of(tmp_path)
    assert {c["length"] for c in done.values()} <= {600} and len(done) >= 1
    assert len(list((tmp_path / ".cells").glob("*.json"))) == len(done)


class _Judge(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((self.headers.get("Authorization"), body))
        out = json.dumps({"choices": [{"message": {"content": "Score: 7"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_openai_judge_key_never_in_cell(tiny_dir, pg_paragraphs, tmp_path, monkeypatch):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("PT_JUDGE_KEY", secret)
    judge = {"kind": "openai", "model": "grader", "base_url": f"http://127.0.0.1:{server.server_port}/v1",
             "api_key_env": "PT_JUDGE_KEY"}
    try:
        rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, depths=("50",)),
                      config_json={"eval": {**SMALL["eval"], "judge": judge}})
    finally:
        server.shutdown()
    assert rc == 0, err
    path = tmp_path / "eval/tiny/baseline/single/seed0/len600/depth50.json"
    c = json.loads(path.read_text())
    assert c["judge"]["score"] == 7 and c["score"] == 7.0 and c["score_rule"] == "judge"
    assert c["score_recall"] == 1 + 9 * c["recall"]
    auth, body = _Judge.seen[-1]
    assert auth == f"Bearer {secret}" and body["temperature"] == 0 and body["model"] == "grader"
    assert "Reference: The best thing" in body["messages"][1]["content"]
    assert secret not in path.read_text() and secret not in err
    assert not any(secret in p.read_text() for p in (tmp_path / ".cells").glob("*.json"))
    monkeypatch.delenv("PT_JUDGE_KEY")
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, depths=("0",)),
                  config_json={"eval": {**SMALL["eval"], "judge": judge}})
    assert rc == 1 and "environment variable PT_JUDGE_KEY is not set" in err


def test_local_judge_tiny(tiny_dir, pg_paragraphs, tmp_path):
    from pausetune.core.models import load_model, load_tokenizer
    from pausetune.core.evaluation.scoring import LocalJudge, judge_messages

    j = LocalJudge(load_model(tiny_dir, "float32", "cpu"), load_tokenizer(tiny_dir), prefill_chunk=512)
    text = j.tok.decode(j.prompt_ids(judge_messages("Q?", "REF", "ANS")))
    assert "Reference: REF" in text and "Answer: ANS" in text and text.endswith("<|im_start|>assistant\n")
    assert isinstance(j(judge_messages("Q?", "REF", "ANS")), str)
    rc, err = cli(*eval_args(tiny_dir, pg_paragraphs, tmp_path, depths=("50",),
                             extra=["--judge-model-dir", str(tiny_dir)]),
                  config_json={"eval": {**SMALL["eval"], "judge": {"kind": "local", "model": "tiny"}}})
    assert rc == 0, err
    c = json.loads((tmp_path / "eval/tiny/baseline/single/seed0/len600/depth50.json").read_text())
    assert c["judge"]["kind"] == "local" and c["score_rule"] == ("judge" if c["judge"]["parsed"] else "recall")


@pytest.mark.integration
def test_snakemake_one_cell_target_runs_alone(tmp_path, pg_raw, pg_paragraphs, tiny_dir, smollm2_dir):
    """block: length builds a whole block; --config eval='{block: cell}' then rebuilds one cell, nothing else."""
    import yaml

    from pausetune.core.config import deep_merge

    from helpers import linked_workdir

    cfg = deep_merge(yaml.safe_load(DEFAULT_CONFIG.read_text()), yaml.safe_load(TINY_CONFIG.read_text()))
    cfg["eval"] = {"models": ["tiny"], "variants": ["baseline"], "tasks": ["single"], "lengths": [600],
                   "depths": [0, 50, 100], "seeds": [0], "threads": 1, "dtype": "bfloat16", "prefill_chunk": 128}
    work = linked_workdir(tmp_path / "wf", pg_raw, pg_paragraphs, {"smollm2": smollm2_dir, "tiny": tiny_dir}, cfg)
    cell = "results/eval/tiny/baseline/single/seed0/len600/depth{}.json"
    smk = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "-c1"]

    def run(*args):
        p = subprocess.run([*smk, *args], capture_output=True, text=True, cwd=work)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout + p.stderr

    out = run(cell.format(50))
    assert re.search(r"\b1 of 1 steps", out), out
    assert all((work / cell.format(d)).exists() for d in (0, 50, 100))  # the length block: all its depths
    before = (work / cell.format(50)).read_bytes()
    (work / cell.format(50)).unlink()
    (work / "results/.cells" / f"{json.loads(before)['cell_id']}.json").unlink()  # recomputed, not restored
    stamps = {d: (work / cell.format(d)).stat().st_mtime_ns for d in (0, 100)}
    out = run(cell.format(50), "--config", "eval={block: cell}")
    assert re.search(r"\b1 of 1 steps", out), out
    assert "1 computed" in (work / "logs/eval/tiny/baseline/single/seed0/len600/depth50.log").read_text()
    assert {d: (work / cell.format(d)).stat().st_mtime_ns for d in (0, 100)} == stamps
    assert (work / cell.format(50)).read_bytes() == before  # alone, the same bytes as in its length block (#29)
    # and a config error is one line at DAG time
    (work / "long.yaml").write_text("eval: {lengths: [9000]}\n")
    p = subprocess.run([*smk, "-n", "--configfile", "config/config.yaml", "long.yaml"], capture_output=True, text=True,
                       cwd=work)
    assert p.returncode != 0 and "config error: config key 'eval.lengths': length 9000" in p.stderr


def test_holdout_check_catches_a_trained_haystack_essay(tmp_path, tiny_shards, pg_paragraphs):
    from pausetune.core.config import load_config
    from pausetune.stages.eval import _check_holdout
    from pausetune.core.data.haystack import haystack_ids, load_essays
    from pausetune.core.io import PausetuneError

    config = load_config([str(DEFAULT_CONFIG), str(TINY_CONFIG)])
    hay = haystack_ids([e for e, _ in load_essays([str(pg_paragraphs)])], config)
    _check_holdout(hay, str(tiny_shards["pause"] / "manifest.json"), config)  # the real split: disjoint
    m = json.loads((tiny_shards["pause"] / "manifest.json").read_text())
    m["splits"]["train"]["order"].append(hay[0])
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(m))
    with pytest.raises(PausetuneError, match=f"haystack essay '{hay[0]}' was used in training"):
        _check_holdout(hay, str(bad), config)
