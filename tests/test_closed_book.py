"""Closed-book cells (issue #26): each cell also answers its question with the document left empty, scored as the
cell is: the guess rate every retrieval number is read against. On the tiny model through the eval stage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEFAULT_CONFIG, TINY_CONFIG, cli_in_process

torch = pytest.importorskip("torch")

GRID = {"eval": {"models": ["tiny"], "lengths": [600], "depths": [0, 100], "prefill_chunk": 128,
                 "closed_book": True}}


cli = cli_in_process


@pytest.fixture(scope="module")
def closed_run(tmp_path_factory, tiny_dir, pg_paragraphs):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    results = tmp_path_factory.mktemp("closed")
    rc, err = cli("eval", "--model", "tiny", "--variant", "pause-prompt", "--tasks", "single", "bank", "--seed", "0",
                  "--lengths", "600", "--depths", "0", "100", "--model-dir", str(tiny_dir), "--haystack",
                  str(pg_paragraphs), "--results", str(results), "--device", "cpu", "--threads", "1",
                  config_json=GRID)
    torch.set_num_threads(old)
    assert rc == 0, err
    return results


def test_closed_book_prompt_holds_no_haystack_token(tiny_dir, pg_paragraphs):
    """The closed-book prompt is the cell prompt's head and tail around an empty document: none of the haystack's
    tokens, no needle, no pause marker; the question is the cell's."""
    from pausetune.core.config import load_config
    from pausetune.core.data.haystack import build_stream, essay_order, haystack_ids, load_essays
    from pausetune.core.evaluation.cells import build_prompts
    from pausetune.core.models import load_tokenizer
    from pausetune.core.tokens import setup_pause

    config = load_config([str(DEFAULT_CONFIG), str(TINY_CONFIG)], json.dumps(GRID))
    tok = load_tokenizer(tiny_dir)
    pause_ids = setup_pause(tok, config["pause"])
    essays = load_essays([str(pg_paragraphs)])
    order = essay_order(haystack_ids([e for e, _ in essays], config), 0)
    stream = build_stream(tok, dict(essays), order, 600, pause_ids)
    closed: list = []
    _, prompts = build_prompts(tok, config, "tiny", stream, 0, [("single", 600, 50.0), ("bank", 600, 0.0)],
                               pause_ids, closed)
    assert len(closed) == 2
    for (inst, cp), ids in zip(prompts, closed):
        head, doc = cp.ids[:cp.head_tokens], cp.ids[cp.head_tokens:cp.head_tokens + cp.haystack_tokens
                                                      + cp.needle_tokens]
        tail = cp.ids[cp.head_tokens + len(doc):]
        assert ids == head + tail  # the template around nothing
        assert len(ids) < 0.2 * len(cp.ids) and not set(pause_ids) & set(ids)
        assert inst.question in tok.decode(ids)
        needle = tok.encode(inst.needles[0], add_special_tokens=False)
        assert not any(ids[i:i + len(needle)] == needle for i in range(len(ids)))


def test_cells_carry_a_scored_closed_book_answer(closed_run):
    cells = {str(p.relative_to(closed_run)): json.loads(p.read_text())
             for p in sorted((closed_run / "eval").rglob("*.json"))}
    assert len(cells) == 4
    for c in cells.values():
        cb = c["closed_book"]
        assert set(cb) >= {"answer", "answer_tokens", "prompt_tokens", "recall", "exact", "score"}
        assert cb["prompt_tokens"] < c["context_tokens"] // 5
        assert cb["score"] == pytest.approx(1 + 9 * cb["recall"])
        assert c["eval"]["closed_book"] is True
    # the single task asks one question in every cell: one closed-book answer for all of them
    singles = [c["closed_book"]["answer"] for k, c in cells.items() if "/single/" in k]
    assert len(set(singles)) == 1


def test_closed_book_is_part_of_the_identity_and_the_summary(closed_run, tiny_dir, pg_paragraphs, tmp_path):
    """A cell made without closed book has another cell_id (never mixed) and no closed_book field; the summary's
    closed_book_recall is the mean of the cells' closed-book recall."""
    from pausetune.stages.aggregate import aggregate, find_cells

    rc, err = cli("eval", "--model", "tiny", "--variant", "pause-prompt", "--tasks", "single", "--seed", "0",
                  "--lengths", "600", "--depths", "0", "--model-dir", str(tiny_dir), "--haystack", str(pg_paragraphs),
                  "--results", str(tmp_path), "--device", "cpu", "--threads", "1",
                  config_json={"eval": {**GRID["eval"], "closed_book": False}})
    assert rc == 0, err
    off = json.loads((tmp_path / "eval/tiny/pause-prompt/single/seed0/len600/depth0.json").read_text())
    on = json.loads((closed_run / "eval/tiny/pause-prompt/single/seed0/len600/depth0.json").read_text())
    assert "closed_book" not in off and off["cell_id"] != on["cell_id"] and off["answer"] == on["answer"]
    res = aggregate(find_cells(closed_run / "eval"), tmp_path / "tables", b=200)
    s = res["summary"]
    for task in ("single", "bank"):
        row = s[(s["kind"] == "overall") & (s["task"] == task)].iloc[0]
        want = [json.loads(p.read_text())["closed_book"]["recall"]
                for p in (closed_run / "eval/tiny/pause-prompt" / task).rglob("*.json")]
        assert row["closed_book_n"] == len(want) == 2
        assert row["closed_book_recall"] == pytest.approx(sum(want) / len(want))
