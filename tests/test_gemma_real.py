"""The eval engine on the real Gemma-3-270M (issue #27): on real haystack prompts of 2K-4K tokens, built as the
long-context study builds them (config/study-long.yaml: the plain layout of a base model), the engine's greedy
answers equal `model.generate`'s and its measures equal a full forward's (fp32, CPU). Every needle sits more than
a sliding window (512) before the question, so only the full-attention layers can see it."""
from __future__ import annotations

import pytest
import torch

from pausetune.core.evaluation.engine import Engine, Measure, Request, eos_ids_of, generate_reference

from conftest import DEFAULT_CONFIG
from helpers import ROOT

CELLS = ((2000, 10), (2000, 60), (4000, 30))


@pytest.fixture(scope="module")
def gemma(gemma3_model, pg_paragraphs):
    from pausetune.core.config import load_config
    from pausetune.core.data.haystack import PromptBuilder, build_stream, essay_order, haystack_ids, load_essays
    from pausetune.core.models import load_model, load_tokenizer

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    config = load_config([str(DEFAULT_CONFIG), str(ROOT / "config" / "study-long.yaml")])
    tok = load_tokenizer(gemma3_model)
    model = load_model(gemma3_model, "float32", "cpu")
    essays = dict(load_essays([str(pg_paragraphs)]))
    stream = build_stream(tok, essays, essay_order(haystack_ids(list(essays), config), 0), max(n for n, _ in CELLS),
                          None)
    b = PromptBuilder(tok, config, "gemma3")
    assert b.chat is False  # a base model: the plain layout
    single = config["tasks"]["single"]
    reqs = []
    for n, d in CELLS:
        cp = b.build(stream, n, d, single["needles"], single["question"])
        s = cp.needle_positions[0]
        assert len(cp.ids) - (s + cp.needle_tokens) > 512  # beyond every sliding layer's window
        m = Measure(answers=[tok.encode(" " + single["needles"][0], add_special_tokens=False)[:12]],
                    needles=[(s, s + cp.needle_tokens)])
        reqs.append(Request((n, d), cp.ids, cp.shareable, m))
    yield tok, model, reqs
    torch.set_num_threads(old)


def test_engine_equals_generate_gemma3(gemma):
    """Prefix reuse across depths and lengths, a grain below the window's multiple, batched decode of 2 rows."""
    tok, model, reqs = gemma
    eos = eos_ids_of(model, tok)
    got = {r.key: r for r in Engine(model, eos, 16, batch_size=2, prefill_chunk=256).run(reqs)}
    assert sum(got[r.key].timing["shared_prefix_tokens"] for r in reqs) > 2000  # the prefix really was reused
    hits = 0
    for r in reqs:
        ref, _ = generate_reference(model, r.ids, 16, eos)
        assert got[r.key].new_ids == ref, (r.key, tok.decode(got[r.key].new_ids), tok.decode(ref))
        hits += "sandwich" in tok.decode(ref).lower() or "dolores" in tok.decode(ref).lower()
    assert hits >= 2  # the model does retrieve the needle across the sliding windows


def test_measures_equal_full_forward_gemma3(gemma):
    """The needle's teacher-forced log-prob equals a full forward of prompt + answer; attention: the sliding layers
    put no mass on the needle (it is beyond their window), the full layers do, and the summary reads those."""
    from pausetune.core.evaluation.cells import measure_fields

    tok, model, reqs = gemma
    r = reqs[0]
    res = next(Engine(model, [], 2, prefill_chunk=512).run([r])).measures
    a = r.measure.answers[0]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([r.ids + a]), use_cache=False).logits[0].float(), -1)
    ref = float(lp[torch.arange(len(r.ids) - 1, len(r.ids) - 1 + len(a)), torch.tensor(a)].sum())
    assert res["answer_logprob"][0] == pytest.approx(ref, abs=2e-3)
    att = res["attention"]
    types = att["layer_types"]
    assert types.count("full") == 3 and types.count("sliding") == 15 and att["window"] == 512
    assert all(x == 0 for x, t in zip(att["needle"], types) if t == "sliding")
    assert max(x for x, t in zip(att["needle"], types) if t == "full") > 0
    for layer in range(len(types)):
        assert sum(att[k][layer] for k in ("needle", "pause", "sink", "rest")) == pytest.approx(1, abs=1e-5)
    full = [x for x, t in zip(att["needle"], types) if t == "full"]
    assert measure_fields(type("I", (), {"answers": ["x"]}), res)["needle_attention"] == \
        pytest.approx(sum(full) / 3, abs=1e-6)
