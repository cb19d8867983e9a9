"""Haystacks, placement, prompts, tasks and the eval grid: counted in SmolLM2's own tokens.

Tokenizer-only (no forward pass): fast. Placement is checked against an independent re-statement of the NIAH
harness's rule (trim to length - buffer - needle, int(tokens x depth / 100), walk back to '.', depth 100 appends).
"""
from __future__ import annotations

import copy

import pytest

from pausetune.core.config import load_config
from pausetune.core.evaluation.grid import Block, blocks, cell_path, eval_targets, expand_depths, expand_lengths
from pausetune.core.checks import check_block, check_eval
from pausetune.core.design import format_depth, parse_depth
from pausetune.core.data.haystack import (Boundaries, PromptBuilder, budget, build_stream, essay_order, haystack_ids, insert_needles, load_essays)
from pausetune.core.io import PausetuneError
from pausetune.core.models import load_tokenizer
from pausetune.core.data.needles import build_task
from pausetune.core.tokens import setup_pause

from conftest import DEFAULT_CONFIG, TINY_CONFIG

NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
Q = "What is the best thing to do in San Francisco?"


@pytest.fixture(scope="module")
def config():
    return load_config([str(DEFAULT_CONFIG), str(TINY_CONFIG)])


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def essays(pg_paragraphs):
    return dict(load_essays([str(pg_paragraphs)]))


@pytest.fixture(scope="module")
def streams(tok, essays, config):
    """The plain and the paused stream of seed 0, and the pause ids."""
    ptok = load_tokenizer_with_pause(tok, config)
    pause_ids = setup_pause(ptok, config["pause"])
    order = essay_order(haystack_ids(list(essays), config), 0)
    plain = build_stream(tok, essays, order, 3000, None)
    paused = build_stream(ptok, essays, order, 3000, pause_ids)
    return plain, paused, pause_ids, ptok


def load_tokenizer_with_pause(tok, config):
    t = copy.deepcopy(tok)
    setup_pause(t, config["pause"])
    return t


def harness_place(hay: list[int], needle: list[int], length: int, depth: float, period: set[int], buffer=200):
    """The NIAH harness's single-needle placement, restated on token lists (test oracle)."""
    ctx = list(hay)
    budget_ = length - buffer
    if len(ctx) + len(needle) > budget_:
        ctx = ctx[:budget_ - len(needle)]
    if depth == 100:
        return ctx + needle, len(ctx)
    p = int(len(ctx) * (depth / 100))
    while p > 0 and ctx[p - 1] not in period:
        p -= 1
    return ctx[:p] + needle + ctx[p:], p


# ------------------------------------------------------------------------------------------------- placement


def test_sentence_boundaries_smollm2(tok):
    b = Boundaries(tok)
    text = "It cost 3.5 dollars (see e.g. the note). Then ycombinator.com said no. Next"
    ids = tok.encode(text, add_special_tokens=False)
    text_at = lambda p: tok.decode(ids[:p])
    ok = [p for p in range(1, len(ids)) if b.ok(ids, p)]
    # "3.5" and "ycombinator.com" are not boundaries; an abbreviation before a space ("e.g. ") is, as in the harness
    assert [text_at(p)[-6:] for p in ok] == ["e e.g.", "note).", "id no."]
    end = len(ids)
    assert text_at(b.walk_back(ids, end - 1)).endswith("said no.")
    assert b.walk_back(ids, 3) == 0  # nothing before: position 0
    # the harness rule: only the '.' token, wherever it is (also inside 3.5)
    h = Boundaries(tok, "harness")
    assert h.ends == set(tok.encode(".", add_special_tokens=False)) and h.ok(ids, ids.index(30) + 1)
    with pytest.raises(PausetuneError, match="eval.sentence_end"):
        Boundaries(tok, "nonsense")


@pytest.mark.parametrize("length", [600, 1000])
@pytest.mark.parametrize("depth", [0, 50, 100])
def test_placement_matches_harness_rule(tok, streams, config, length, depth):
    plain = streams[0]
    cfg = copy.deepcopy(config)
    cfg["eval"].update(needle_prefix="", sentence_end="harness")  # the harness's exact settings
    b = PromptBuilder(tok, cfg, "smollm2")
    cp = b.build(plain, length, depth, [NEEDLE], Q)
    head, tail = b.parts(Q)
    needle = tok.encode(NEEDLE, add_special_tokens=False)
    doc, p = harness_place(plain, needle, length, depth, set(tok.encode(".", add_special_tokens=False)))
    assert cp.ids == head + doc + tail
    assert cp.needle_positions == [len(head) + p]
    assert cp.haystack_tokens == length - 200 - len(needle)
    assert len(cp.ids) == length - 200 + len(head) + len(tail) <= length - 32  # context_tokens, answer room
    if depth == 0:
        assert p == 0 and cp.depth_actual == 0
    if depth == 100:
        assert doc[-len(needle):] == needle and cp.depth_actual == 100
    if depth == 50:
        target = int(cp.haystack_tokens * 0.5)
        assert p <= target and tok.decode(plain[p - 1:p]) == "." and 40 < cp.depth_actual <= 50
        assert all(plain[q - 1] != 30 for q in range(p + 1, target + 1))  # the nearest '.' walking back


def test_default_placement_sentence_end_and_space(tok, streams, config):
    plain = streams[0]
    b = PromptBuilder(tok, config, "smollm2")
    for depth in (10, 25, 50, 75, 90):
        cp = b.build(plain, 1000, depth, [NEEDLE], Q)
        p = cp.needle_positions[0] - cp.head_tokens
        before = tok.decode(plain[:p])
        assert before.rstrip()[-1] in ".!?\")'", before[-20:]
        assert tok.decode(cp.ids[cp.needle_positions[0]:cp.needle_positions[0] + 3]).startswith(" The best")
        assert p <= int(cp.haystack_tokens * depth / 100)


def test_exact_budget_fills_length(tok, streams, config):
    cfg = copy.deepcopy(config)
    cfg["eval"]["buffer"] = None
    b = PromptBuilder(tok, cfg, "smollm2")
    for n in (300, 777, 1000):
        cp = b.build(streams[0], n, 50, [NEEDLE], Q)
        assert len(cp.ids) == n
        assert cp.haystack_tokens == n - b.overhead(Q) - cp.needle_tokens


def test_no_special_token_inside_the_document(tok, streams, config):
    plain, paused, pause_ids, ptok = streams
    for stream, t, pids in ((plain, tok, None), (paused, ptok, pause_ids)):
        b = PromptBuilder(t, config, "smollm2", pids)
        cp = b.build(stream, 1000, 50, [NEEDLE], Q)
        head, tail = b.parts(Q)
        doc = cp.ids[len(head):len(cp.ids) - len(tail)]
        specials = set(t.all_special_ids) - set(pids or [])
        assert not specials & set(doc)
        # the model's special tokens come once, from the template: <|im_start|> opens the prompt
        assert cp.ids[0] == t.convert_tokens_to_ids("<|im_start|>") and cp.ids[1] != cp.ids[0]
        assert t.decode(tail).endswith("<|im_start|>assistant\n")
        if pids:
            assert sum(x == pids[0] for x in doc) > 5


def test_paused_stream_is_plain_plus_pauses(streams, pg_paragraphs):
    plain, paused, pause_ids, _ = streams
    pid = pause_ids[0]
    stripped = [t for t in paused if t != pid]
    n = min(len(plain), len(stripped))
    assert stripped[:n] == plain[:n] and n > 2500
    # a pause follows each paragraph's last token, then the separator
    assert paused.count(pid) > 10


def test_paused_needle_never_splits_a_pause(tok, streams, config):
    _, paused, pause_ids, ptok = streams
    b = PromptBuilder(ptok, config, "smollm2", pause_ids)
    for depth in range(0, 101, 5):
        cp = b.build(paused, 1000, depth, [NEEDLE], Q)
        p = cp.needle_positions[0]
        if 0 < depth < 100 and p > cp.head_tokens:
            assert cp.ids[p - 1] not in pause_ids and ptok.decode(cp.ids[p - 1:p]).rstrip()[-1] in ".!?\")'"


def test_prefixes_shared_across_lengths_and_depths(tok, streams, config):
    b = PromptBuilder(tok, config, "smollm2")
    cps = [b.build(streams[0], n, d, [NEEDLE], Q) for n in (600, 1000) for d in (0, 30, 60, 100)]
    head = b.parts(Q)[0]
    for cp in cps:
        assert cp.ids[:cp.shareable] == head + streams[0][:cp.shareable - len(head)]


def test_multi_needle_spread_like_the_harness(tok, streams, config):
    b = PromptBuilder(tok, config, "smollm2")
    task = build_task("multi", config["tasks"]["multi"], 0, 0, 1000, 20)
    cp = b.build(streams[0], 1000, 20, task.needles, task.question)
    assert len(cp.needle_positions) == 3 and cp.needle_positions == sorted(cp.needle_positions)
    assert 10 < cp.needle_depths[0] <= 20 and cp.needle_depths[1] <= 20 + 80 / 3 + 0.1
    enc = b.encode_needles(task.needles)
    for p, e in zip(cp.needle_positions, enc):
        assert cp.ids[p:p + len(e)] == e
    # the harness's sequential insertion on a toy list: depth 100 appends every needle
    bounds = Boundaries(tok, "harness")
    doc, starts = insert_needles([5, 30, 6, 30, 7], [[1], [2]], 100, bounds)
    assert doc == [5, 30, 6, 30, 7, 1, 2] and starts == [5, 6]


def test_budget_errors_are_one_line(config):
    ev = dict(config["eval"])
    with pytest.raises(PausetuneError, match="eval.lengths.*needles are longer than the context") as e:
        budget(220, ev, 30, 50, task="single")
    assert "\n" not in str(e.value)
    with pytest.raises(PausetuneError, match="eval.buffer"):
        budget(2000, {**ev, "buffer": 40}, 20, 50, task="single")
    assert budget(1000, {**ev, "buffer": None}, 20, 50) == 930


# ------------------------------------------------------------------------------------------------- tasks


def test_ruler_tasks_seeded_per_cell(config):
    tasks = config["tasks"]
    a = build_task("multikey", tasks["multikey"], 0, 0, 1000, 50)
    assert a == build_task("multikey", tasks["multikey"], 0, 0, 1000, 50)
    others = [build_task("multikey", tasks["multikey"], 0, s, n, d) for s, n, d in
              ((1, 1000, 50), (0, 2000, 50), (0, 1000, 25))]
    assert all(o.needles != a.needles for o in others)
    assert build_task("multikey", tasks["multikey"], 1, 0, 1000, 50).needles != a.needles  # root seed
    key, value = a.keys["asked"][0], a.facts[0]
    assert a.needles[0] == f"One of the special magic numbers for {key} is: {value}." and key in a.question
    assert len(a.needles) == 4 and len(set(a.needles)) == 4 and len(value) == 7 and value.isdigit()
    mv = build_task("multivalue", tasks["multivalue"], 0, 0, 1000, 50)
    assert len(mv.facts) == 4 and all(mv.keys["asked"][0] in n for n in mv.needles)
    mq = build_task("multiquery", tasks["multiquery"], 0, 0, 1000, 50)
    assert len(mq.facts) == 2 and all(k in mq.question for k in mq.keys["asked"]) and " and " in mq.question
    s = build_task("single", tasks["single"], 0, 0, 1000, 50)
    assert s.needles == [NEEDLE] and s.facts == ["sandwich", "Dolores Park", "sunny"]
    # the expected answers the cell's log-prob is teacher-forced on, and the needles that hold them
    assert s.answers == [NEEDLE] and s.targets == [0]
    assert a.answers == [value] and a.targets == [0] and mv.answers == mv.facts and mv.targets == [0, 1, 2, 3]
    assert [mq.needles[i].split()[-1].rstrip(".") for i in mq.targets] == mq.answers == mq.facts


def test_variable_tracking_chain(tok, streams, config):
    """RULER's variable tracking: a seeded chain in order through the haystack, scored by recall of the names."""
    from pausetune.core.evaluation.scoring import score_answer

    spec = {**config["tasks"]["vartrack"], "num_chains": 2}
    t = build_task("vartrack", spec, 0, 0, 1000, 30)
    assert t == build_task("vartrack", spec, 0, 0, 1000, 30)
    assert t.needles != build_task("vartrack", spec, 0, 1, 1000, 30).needles
    value = t.keys["asked"][0]
    names = t.keys["chains"][value]
    assert len(t.needles) == 10 and t.facts == names == t.answers and len(set(sum(t.keys["chains"].values(), []))) == 10
    assert [t.needles[i] for i in t.targets] == [f"VAR {names[0]} = {value}."] + [
        f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    assert value in t.question and len(value) == 5 and all(len(n) == 5 and n.isupper() for n in names)
    b = PromptBuilder(tok, config, "smollm2")
    cp = b.build(streams[0], 1000, 30, t.needles, t.question)
    assert cp.needle_positions == sorted(cp.needle_positions)  # every assignment comes before its copy
    assert 20 < cp.needle_depths[0] <= 30 and len(cp.needle_lengths) == 10
    sc = score_answer(f"VAR {names[0]}, {names[2].lower()} and {names[4]}", t.facts)
    assert sc["recall"] == pytest.approx(3 / 5) and not sc["exact"]
    with pytest.raises(PausetuneError, match="tasks.vt.question.*{value}"):
        build_task("vt", {**spec, "question": "Which variables?"}, 0, 0, 1000, 30)


# ------------------------------------------------------------------------------------------------- grid


def test_grid_expansion_and_paths():
    assert expand_lengths([1000, 2000]) == [1000, 2000]
    assert expand_lengths({"min": 1000, "max": 16000, "num": 4}) == [1000, 6000, 11000, 16000]
    assert expand_lengths({"min": 1000, "max": 8000, "num": 4, "spacing": "log"}) == [1000, 2000, 4000, 8000]
    assert expand_depths({"num": 5}) == [0, 25, 50, 75, 100]
    sig = expand_depths({"num": 5, "spacing": "sigmoid"})
    assert sig[0] == 0 and sig[-1] == 100 and 50 in sig and len(sig) == 5
    assert [format_depth(d) for d in (0, 50.0, 12.5, 100)] == ["0", "50", "12.5", "100"]
    assert parse_depth("12.5") == 12.5
    assert cell_path("m", "baseline", "single", 0, 1000, 50.0) == \
        "results/eval/m/baseline/single/seed0/len1000/depth50.json"
    # a tuned variant's cell names its adapter's training seed, one folder below the variant; exactly those do
    assert cell_path("m", "plain-tuned-on-paused", "single", 0, 1000, 50.0, tseed=1) == \
        "results/eval/m/plain-tuned-on-paused/tseed1/single/seed0/len1000/depth50.json"
    with pytest.raises(PausetuneError, match="a tuned variant's cell needs its training seed"):
        cell_path("m", "pause-tuned", "single", 0, 1000, 50.0)
    with pytest.raises(PausetuneError, match="an untrained variant has no training seed"):
        cell_path("m", "pause-prompt", "single", 0, 1000, 50.0, tseed=0)


def test_blocks_by_mode(config):
    cfg = copy.deepcopy(config)
    cfg["eval"].update(models=["tiny"], variants=["baseline", "pause-prompt"], tasks=["single", "multi"],
                       lengths=[600, 1200], depths=[0, 50, 100], seeds=[0, 1])
    n_cells = 2 * 2 * 2 * 2 * 3
    for mode, n_blocks in (("cell", n_cells), ("length", 2 * 2 * 2 * 2), ("seed", 2 * 2)):
        cfg["eval"]["block"] = mode
        bl = blocks(cfg)
        assert len(bl) == n_blocks and sum(len(b.cells()) for b in bl) == n_cells
    check_eval(cfg, prepared_root=None)
    paths = eval_targets(cfg)
    assert len(paths) == len(set(paths)) == n_cells
    assert Block("m", "baseline", 0, (("single", (600,), (12.5,)),)).paths()[0].endswith("len600/depth12.5.json")


def test_tuned_blocks_per_training_seed_untrained_once(config):
    """train.seeds [0, 1]: each tuned variant (the crossed ones too) has a block set per training seed, the untrained
    variants one; every cell path once."""
    cfg = copy.deepcopy(config)
    cfg["train"].update(models=["tiny"], seeds=[0, 1])
    cfg["eval"].update(models=["tiny"], variants=["baseline", "pause-prompt", "pause-tuned", "plain-tuned-on-paused"],
                       tasks=["single"], lengths=[600, 1200], depths=[0, 50], seeds=[0], block="length")
    check_eval(cfg, prepared_root=None)
    bl = blocks(cfg)
    assert sorted((b.variant, b.tseed) for b in bl) == sorted(
        [(v, None) for v in ("baseline", "pause-prompt") for _ in (600, 1200)]
        + [(v, n) for v in ("pause-tuned", "plain-tuned-on-paused") for n in (0, 1) for _ in (600, 1200)])
    paths = eval_targets(cfg)
    assert len(paths) == len(set(paths)) == (2 + 2 * 2) * 2 * 2
    assert "results/eval/tiny/baseline/single/seed0/len600/depth0.json" in paths
    assert "results/eval/tiny/plain-tuned-on-paused/tseed1/single/seed0/len1200/depth50.json" in paths
    assert not any("/baseline/tseed" in p or "/pause-prompt/tseed" in p for p in paths)
    assert {p.split("/")[4] for p in paths if "-tuned" in p} == {"tseed0", "tseed1"}


def test_task_grid(config):
    """A task's own lengths/depths (eval.task_grid): multi on a coarser grid than single."""
    cfg = copy.deepcopy(config)
    cfg["eval"].update(models=["tiny"], variants=["baseline"], tasks=["single", "multi"], lengths=[600, 1200],
                       depths={"num": 5}, seeds=[0, 1], block="seed",
                       task_grid={"multi": {"lengths": [1200], "depths": [0, 50]}})
    check_eval(cfg, prepared_root=None)
    bl = blocks(cfg)
    assert [b.grid for b in bl][0] == (("single", (600, 1200), (0, 25, 50, 75, 100)), ("multi", (1200,), (0, 50)))
    paths = eval_targets(cfg)
    assert len(paths) == 2 * (2 * 5 + 2) and "results/eval/tiny/baseline/multi/seed1/len1200/depth50.json" in paths
    assert not any("multi/seed0/len600" in p or "multi/seed0/len1200/depth25" in p for p in paths)
    cfg["eval"]["block"] = "cell"
    assert sorted(eval_targets(cfg)) == sorted(paths)
    cfg["eval"]["block"] = "length"  # one depth list per length block: a clear error, not a wrong DAG
    with pytest.raises(PausetuneError, match="^config key 'eval.task_grid': tasks with different depths"):
        check_eval(cfg, prepared_root=None)
    cfg["eval"]["task_grid"] = {"multi": {"lengths": [1200]}}
    check_eval(cfg, prepared_root=None)
    assert len(blocks(cfg)) == 2 * (2 + 1)
    cfg["eval"]["task_grid"] = {"multy": {"lengths": [1200]}}
    with pytest.raises(PausetuneError, match="^config key 'eval.task_grid.multy': unknown task"):
        check_eval(cfg, prepared_root=None)
    cfg["eval"]["task_grid"] = {"multi": {"depths": [0, 150]}}
    with pytest.raises(PausetuneError, match="^config key 'eval.task_grid.multi.depths': depth 150"):
        check_eval(cfg, prepared_root=None)


@pytest.mark.parametrize("change, key", [
    ({"eval": {"tasks": ["nope"]}}, "config key 'eval.tasks': unknown task 'nope'"),
    ({"eval": {"variants": ["pause-tuned"]}, "train": {"models": []}}, "config key 'eval.variants'"),
    ({"eval": {"models": ["ghost"]}}, "config key 'eval.models': unknown model 'ghost'"),
    ({"eval": {"lengths": [8190]}}, "config key 'eval.lengths': length 8190"),
    ({"tasks": {"single": {"kind": "single", "needles": ["a", "b"], "question": "q", "expected": [["a"]]}}},
     "config key 'tasks.single.needles'"),
    ({"tasks": {"mk2": {"kind": "multikey", "question": "q {key}"}}}, "config key 'tasks.mk2.template'"),
])
def test_grid_errors_one_line(config, change, key):
    from pausetune.core.config import deep_merge

    cfg = deep_merge(config, change)
    cfg["eval"]["tasks"] = change.get("eval", {}).get("tasks", list(change.get("tasks", {})) or ["single"])
    cfg["eval"]["models"] = change.get("eval", {}).get("models", ["smollm2"])
    with pytest.raises(PausetuneError) as e:
        check_eval(cfg, prepared_root=None)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_schema_rejects_bad_depth_and_variant_and_kind():
    for cj, key in (('{"eval": {"depths": [150]}}', "eval.depths"), ('{"eval": {"variants": ["x"]}}', "eval.variants"),
                    ('{"tasks": {"t": {"kind": "weird"}}}', "tasks.t.kind"),
                    ('{"eval": {"block": "x"}}', "eval.block")):
        with pytest.raises(PausetuneError) as e:
            load_config([str(DEFAULT_CONFIG)], cj)
        assert key in str(e.value) and "\n" not in str(e.value)


def test_check_block_and_budgets(config, tok, smollm2_dir):
    with pytest.raises(PausetuneError, match="depth 150 is outside 0-100"):
        check_block(config, "smollm2", "baseline", ["single"], [1000], [150])
    with pytest.raises(PausetuneError, match="unknown variant 'x'"):
        check_block(config, "smollm2", "x", ["single"], [1000], [50])
    from pausetune.core.checks import check_budgets

    cfg = copy.deepcopy(config)
    cfg["eval"].update(models=["smollm2"], lengths=[240], tasks=["multikey"], depths=[0, 50])
    with pytest.raises(PausetuneError, match="eval.lengths': length 240 leaves no haystack"):
        check_budgets(cfg, "smollm2", smollm2_dir, tokenizer=tok)
    cfg["eval"]["lengths"] = [1000]
    check_budgets(cfg, "smollm2", smollm2_dir, tokenizer=tok)
