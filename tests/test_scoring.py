"""Deterministic scoring by hand cases, and the judge's prompt and score parsing."""
from __future__ import annotations

import pytest

from pausetune.core.io import PausetuneError
from pausetune.core.evaluation.scoring import fact_found, judge_messages, judge_score, normalise, parse_judge_score, score_answer

SF = ["sandwich", "Dolores Park", "sunny"]


def test_normalise():
    assert normalise("  Eat a SANDWICH,\n in  Dolores-Park!! ") == "eat a sandwich in dolores park"
    assert normalise("ﬁgs and Ｐrosciutto") == "figs and prosciutto"  # NFKC: ligature, full-width
    assert normalise("The number is 1,234,567.") == "the number is 1234567"
    assert normalise("“quoted” — dash…") == "quoted dash"


@pytest.mark.parametrize("answer, recall, score, exact", [
    ("Eat a sandwich and sit in Dolores Park on a sunny day.", 1.0, 10.0, True),
    ("eat a SANDWICH in dolores park when it's sunny", 1.0, 10.0, True),          # wording does not matter
    ("Sit in Dolores Park.", 1 / 3, 4.0, False),
    ("Eat a sandwich in Dolores Park.", 2 / 3, 7.0, False),
    ("I don't know.", 0.0, 1.0, False),
    ("", 0.0, 1.0, False),
    ("Go to the park on a sunnyday with sandwiches", 0.0, 1.0, False),           # whole words only
])
def test_score_hand_cases(answer, recall, score, exact):
    s = score_answer(answer, SF)
    assert s["recall"] == pytest.approx(recall, abs=1e-6)
    assert s["score"] == pytest.approx(score, abs=1e-3)
    assert s["exact"] is exact


def test_phrase_must_be_contiguous_and_alternatives():
    assert not fact_found("Dolores Park", normalise("Dolores is a park"))
    assert fact_found("goat cheese", normalise("Goat-cheese, figs"))
    assert fact_found("figs|fig", normalise("a fig"))
    assert not fact_found("park", normalise("parking lot"))
    s = score_answer("Figs, prosciutto and goat cheese.", ["figs", "prosciutto", "goat cheese"])
    assert s["exact"] and s["facts_found"] == [True, True, True]
    assert score_answer("The magic number is 4,817,203", ["4817203"])["exact"]
    with pytest.raises(PausetuneError):
        score_answer("x", [])


@pytest.mark.parametrize("text, score", [
    ("7", 7), ("Score: 10", 10), ("10/10", 10), ("7/10 because", 7), (" 3.", 3), ("I'd say 5 out of 10", 5),
    ("3.5", None), ("100", None), ("none", None), ("", None), ("0", None),
])
def test_parse_judge_score(text, score):
    assert parse_judge_score(text) == score


def test_judge_prompt_and_score():
    msgs = judge_messages("What is X?", "X is 42.", "It is 42")
    assert msgs[0]["role"] == "system" and msgs[1]["role"] == "user"
    for s in ("1 -", "3 -", "5 -", "7 -", "10 -", "Question: What is X?", "Reference: X is 42.", "Answer: It is 42"):
        assert s in msgs[1]["content"]
    seen = []
    j = judge_score({"kind": "local", "model": "m"}, lambda m: seen.append(m) or " 7\n", "What is X?", "X is 42.", "42")
    assert j == {"kind": "local", "model": "m", "raw": "7", "score": 7, "parsed": True} and seen
    j = judge_score({"kind": "local", "model": "m"}, lambda m: "no idea", "q", "r", "a")
    assert j["parsed"] is False and j["score"] is None
