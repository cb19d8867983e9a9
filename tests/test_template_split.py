"""The out-of-template evaluation bank (issue #28): no sentence shape and no answer word in common with training,
and the check names an injected overlap in one line."""
from __future__ import annotations

import json

import pytest

from pausetune.core.config import load_config
from pausetune.core.data.banks import (OOD_TEMPLATES, TEMPLATES, bank, check_template_split, generate,
                                       template_pattern)
from pausetune.core.io import PausetuneError

from conftest import DEFAULT_CONFIG


def cfg(overlay=None):
    return load_config([str(DEFAULT_CONFIG)], json.dumps(overlay) if overlay else None)


def test_no_template_and_no_answer_word_in_common():
    config = cfg()
    ood, train = check_template_split(config), bank(config, "train")
    assert len(ood) == 60
    train_shapes = [template_pattern(t[0]) for t in TEMPLATES]
    assert not any(p.match(" ".join(r["needle"].casefold().split())) for r in ood for p in train_shapes)
    assert not {r["answer"] for r in ood} & {r["answer"] for r in train}
    assert not {a for t in OOD_TEMPLATES for a in t[3]} & {a for t in TEMPLATES for a in t[3]}
    assert not {t[0] for t in OOD_TEMPLATES} & {t[0] for t in TEMPLATES}
    # every template's own needles fit it (the pattern is what the check relies on)
    for t in TEMPLATES:
        n = t[0].format(s="Maria", d="soup", a="cumin")
        assert template_pattern(t[0]).match(" ".join(n.casefold().split()))
    assert generate("eval_ood", 10, 0) == generate("eval_ood", 10, 0) != generate("eval_ood", 10, 1)


@pytest.mark.parametrize("extra, says", [
    ({"needle": "Omar's favourite colour is glitter.", "question": "Q?", "answer": "glitter"}, "has the shape"),
    ({"needle": "A brand new sentence about a kite.", "question": "Q?", "answer": "cardamom"}, "training answer"),
])
def test_an_injected_overlap_is_one_line(extra, says):
    with pytest.raises(PausetuneError) as e:
        check_template_split(cfg({"banks": {"eval_ood": {"extra": [extra]}}}))
    msg = str(e.value)
    assert "\n" not in msg and "banks.eval_ood.extra[0]" in msg and says in msg


@pytest.mark.parametrize("which, n", [(True, 60), ("eval", 60), ("eval_ood", 60), ("associations", 100)])
def test_bank_tasks_draw_from_the_named_bank(which, n):
    """A `single` task with `bank: X` draws every cell's needle, question and answer from bank X, seeded by the
    cell: the out-of-template and low-overlap banks become tasks of their own beside the in-template one."""
    from pausetune.core.data.banks import task_bank
    from pausetune.core.data.needles import build_task

    config = cfg({"tasks": {"t": {"kind": "single", "bank": which}}})
    rows = task_bank(config, which)
    assert len(rows) == n
    inst = [build_task("t", config["tasks"]["t"], 0, 0, 2000, d, bank=rows) for d in (0, 50, 100)]
    for i in inst:
        row = next(r for r in rows if r["needle"] == i.needles[0])
        assert i.question == row["question"] and i.facts == [row["answer"]]
    assert len({i.needles[0] for i in inst}) > 1  # cells draw different facts
