"""Tokenized shards: exact token counts, pause ids exactly at paragraph ends, variants equal otherwise."""
import json

import pandas as pd
import pytest

from pausetune.core.models import load_tokenizer
from pausetune.core.data.splits import essay_split
from pausetune.core.data.shardfiles import load_shards
from pausetune.stages.shards import pack
from pausetune.core.tokens import encode_paragraphs, separator_ids, setup_pause

from conftest import run_cli


def test_pack_exact_rows_and_tail():
    rows, dropped = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, eos_id=0)
    # stream: 1 2 3 0 4 5 0 6 7 8 9 -> 11 tokens -> two rows of 4, 3 dropped
    assert rows == [[1, 2, 3, 0], [4, 5, 0, 6]] and dropped == 3


def test_essay_split_is_stable_and_disjoint():
    ids = [f"pg/{i}" for i in range(40)]
    cfg = {"holdout_haystack": True, "haystack_fraction": 0.5, "validation_fraction": 0.1}
    a = essay_split(ids, cfg, seed=0)
    assert a == essay_split(list(reversed(ids)), cfg, seed=0)
    assert not set(a["train"]) & set(a["haystack"]) and not set(a["validation"]) & set(a["haystack"])
    assert sorted(a["train"] + a["validation"] + a["haystack"]) == sorted(ids)
    # adding an essay does not move the others
    b = essay_split(ids + ["pg/new"], cfg, seed=0)
    assert set(a["haystack"]) <= set(b["haystack"]) | {"pg/new"}
    assert set(a["haystack"]) == set(b["haystack"]) - {"pg/new"}
    no_holdout = essay_split(ids, {**cfg, "holdout_haystack": False}, seed=0)
    assert sorted(no_holdout["haystack"]) == sorted(ids)


def test_shards_pause_ids_at_paragraph_ends(tiny_shards, tiny_dir, pg_paragraphs):
    pause_ds, pause_m = load_shards(tiny_shards["pause"])
    plain_ds, plain_m = load_shards(tiny_shards["plain"])
    seq = pause_m["seq_len"]
    pause_id = pause_m["pause_ids"][0]
    assert plain_m["pause_ids"] == [] and len(pause_m["pause_ids"]) == 1
    for ds, m in ((pause_ds, pause_m), (plain_ds, plain_m)):
        for split in ("train", "validation"):
            assert all(len(r) == seq for r in ds[split]["input_ids"])
            assert m["splits"][split]["tokens"] == len(ds[split]) * seq
    assert all(pause_id not in r for r in plain_ds["train"]["input_ids"])
    # the same essays in the same order on both sides, and none of the held-out haystack essays
    assert pause_m["splits"]["train"]["order"] == plain_m["splits"]["train"]["order"]
    assert not set(pause_m["splits"]["train"]["order"]) & set(pause_m["haystack_essays"])

    # Rebuild the full streams independently and check the packed rows are exactly their prefix.
    tok = load_tokenizer(tiny_dir)
    pids = setup_pause(tok, pause_m["pause"])
    assert pids == [pause_id]
    sep = separator_ids(tok)
    essays = pd.read_parquet(pg_paragraphs)
    essays["id"] = "paul_graham/" + essays["id"]
    by_id = dict(zip(essays["id"], essays["paragraphs"]))
    flat_pause, flat_plain, n_paragraphs = [], [], 0
    for i, eid in enumerate(pause_m["splits"]["train"]["order"]):
        if i:
            flat_pause.append(tok.eos_token_id)
            flat_plain.append(tok.eos_token_id)
        p_ids, ends = encode_paragraphs(tok, list(by_id[eid]), pids, sep)
        q_ids, _ = encode_paragraphs(tok, list(by_id[eid]), None, sep)
        # the pause id sits right after every paragraph end, and nowhere else
        assert [j for j, t in enumerate(p_ids) if t == pause_id] == ends
        assert [t for t in p_ids if t != pause_id] == q_ids
        n_paragraphs += len(ends)
        flat_pause += p_ids
        flat_plain += q_ids
    rows_pause = [t for r in pause_ds["train"]["input_ids"] for t in r]
    rows_plain = [t for r in plain_ds["train"]["input_ids"] for t in r]
    assert rows_pause == flat_pause[:len(rows_pause)]
    assert rows_plain == flat_plain[:len(rows_plain)]
    assert len(flat_pause) - len(rows_pause) == pause_m["splits"]["train"]["dropped_tail_tokens"]
    assert flat_pause.count(pause_id) == n_paragraphs
    # and with the pause ids removed, the two variants are the same token stream
    assert [t for t in flat_pause if t != pause_id] == flat_plain


def test_shards_text_mode_and_manifest(tmp_path, pg_paragraphs, tiny_dir, tiny_config):
    out = tmp_path / "shards"
    run_cli("shards", *tiny_config, "--config-json", json.dumps({"pause": {"mode": "text"}}),
            "--inputs", str(pg_paragraphs), "--model-dir", str(tiny_dir), "--variant", "pause", "--output", str(out))
    ds, m = load_shards(out)
    assert len(m["pause_ids"]) > 1  # the literal string is several ordinary tokens
    assert m["vocab_size"] == len(load_tokenizer(tiny_dir))  # no token added in text mode
    assert set(m) >= {"tokenizer_fingerprint", "sources", "splits", "seq_len", "paragraph_method"}
    assert (out / "tokenizer" / "tokenizer.json").exists()


def test_shards_seq_len_too_long(tmp_path, pg_paragraphs, tiny_dir, tiny_config):
    proc = run_cli("shards", *tiny_config, "--config-json", json.dumps({"shards": {"seq_len": 10_000_000}}),
                   "--inputs", str(pg_paragraphs), "--model-dir", str(tiny_dir), "--variant", "plain",
                   "--output", str(tmp_path / "s"), check=False)
    assert proc.returncode == 1 and "seq_len" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_shards_missing_column(tmp_path, tiny_dir, tiny_config):
    bad = tmp_path / "paragraphs.parquet"
    pd.DataFrame({"id": ["a"], "text": ["x"]}).to_parquet(bad)
    proc = run_cli("shards", *tiny_config, "--inputs", str(bad), "--model-dir", str(tiny_dir),
                   "--variant", "plain", "--output", str(tmp_path / "s"), check=False)
    assert proc.returncode == 1 and "missing column" in proc.stderr and str(bad) in proc.stderr
