"""The eval engine on hybrid attention (issue #27): a decoder whose layers mix sliding-window and full attention
(Gemma-3: five sliding layers of window 512, then one full layer) gives the greedy answers of `model.generate`,
the log-probs of a full forward and the attention rows of eager attention, with prefix reuse across depths and
lengths, any prefill grain and batched decode; and a cell's numbers do not depend on its neighbours.

A small random Gemma-3 (window 48, prompts up to 1.4K tokens, so every sliding layer drops most keys) is checked
here in fp32 and bf16; the real Gemma-3-270M on real 2K-4K prompts in test_gemma_real.py.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from pausetune.core.evaluation.engine import Engine, Measure, Request, _window_attention
from pausetune.core.evaluation.kvcache import layer_windows, supports_buffer_cache

# one_thread: test_engine's module-wide autouse fixture, used here too
from test_engine import (_cells, _reference_measures, assert_cells_independent, assert_engine_equals_generate,
                         one_thread)  # noqa: F401

WINDOW = 48
TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]


@pytest.fixture(scope="module")
def gemma_model():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=WINDOW,
                           layer_types=TYPES, max_position_embeddings=4096, query_pre_attn_scalar=16,
                           initializer_range=0.02, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                           tie_word_embeddings=True)
    model = Gemma3ForCausalLM(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


def _requests(seed: int, lengths=(200, 600, 1400), depths=(0, 20, 50, 80, 100)):
    rng = random.Random(seed)
    stream = [rng.randrange(4, 320) for _ in range(max(lengths) + 100)]
    head, tail, needle = [1, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]
    return _cells(rng, stream, lengths, depths, head, tail, needle), needle


def test_layer_windows():
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    small = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8)
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(**small, sliding_window=5,
                                               layer_types=["sliding_attention", "full_attention", "sliding_attention"]))
    assert layer_windows(gemma) == [5, None, 5]
    assert layer_windows(LlamaForCausalLM(LlamaConfig(**small))) == [None, None, None]
    assert layer_windows(MistralForCausalLM(MistralConfig(**small, sliding_window=7))) == [7, 7, 7]
    assert all(supports_buffer_cache(m) for m in (gemma,))


@pytest.mark.parametrize("past, q_len, window, block", [(0, 100, 16, 16), (37, 11, 8, 8), (300, 200, 48, 16),
                                                        (40, 90, 48, 48), (5, 3, 4, 2)])
def test_window_attention_equals_masked_sdpa(past, q_len, window, block):
    """q new queries on `past` cached keys, each seeing the keys p - window < k <= p: equal to one masked SDPA."""
    torch.manual_seed(0)
    g = 4
    q = torch.randn(2, 2 * g, q_len, 16)
    k = torch.randn(2, 2, past + q_len, 16)
    v = torch.randn(2, 2, past + q_len, 16)
    diff = torch.arange(past, past + q_len)[:, None] - torch.arange(past + q_len)[None, :]
    mask = (diff >= 0) & (diff < window)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask)
    got = _window_attention(q, k, v, None, window, block)
    assert torch.allclose(got.transpose(1, 2), ref, atol=1e-5)


@pytest.mark.parametrize("batch_size, reuse, chunk",
                         [(1, True, 4096), (3, True, 512), (2, True, 97), (2, False, 512), (1, True, 32)])
def test_engine_equals_generate_hybrid(gemma_model, batch_size, reuse, chunk):
    """Cached prefix, chunked prefill (grains below, at and above the window; 97 is coprime with it) and batched
    decode give `generate`'s greedy answers; stock attention is restored after the run."""
    assert_engine_equals_generate(gemma_model, _requests(1)[0], batch_size, reuse, chunk)


def test_measures_equal_full_forward_hybrid(gemma_model):
    """Teacher-forced log-probs equal a full forward's; each layer's attention row equals eager attention's (which
    masks the window itself), a sliding layer puts no mass on a needle further back than its window, and the cell's
    summary reads the full-attention layers only."""
    from pausetune.core.evaluation.cells import measure_fields

    rng = random.Random(2)
    stream = [rng.randrange(4, 320) for _ in range(700)]
    head, tail, needle = [1, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]
    reqs = []
    for n, d in ((300, 0), (300, 95), (600, 50), (600, 100)):
        p = int(n * d / 100)
        ids = head + stream[:p] + needle + stream[p:n] + tail
        s = len(head) + p
        reqs.append(Request((n, d), ids, s, Measure(answers=[[21, 22, 23], [40]], needles=[(s, s + len(needle))])))
    got = {r.key: r.measures for r in Engine(gemma_model, [2], 6, batch_size=2, prefill_chunk=64).run(reqs)}
    for r in reqs:
        res, ref = got[r.key], _reference_measures(gemma_model, r.ids, r.measure)
        assert res["answer_logprob"] == pytest.approx(ref["answer_logprob"], abs=1e-4)
        assert res["needle_rank"] == ref["needle_rank"]
        a = res["attention"]
        assert a["layer_types"] == ["sliding", "sliding", "full", "sliding"] and a["window"] == WINDOW
        for key in ("needle", "sink", "rest", "needle_each"):
            assert a[key] == pytest.approx(ref["attention"][key], abs=1e-5), key
        far = len(r.ids) - 1 - r.measure.needles[0][1] >= WINDOW  # the needle ends before the window starts
        assert far == (r.key[1] < 90)
        sliding_needle = [a["needle"][i] for i in (0, 1, 3)]
        assert (max(sliding_needle) == 0) == far
        assert a["needle"][2] > 0
        fields = measure_fields(type("I", (), {"answers": ["x"]}), res)
        assert fields["needle_attention"] == pytest.approx(a["needle"][2], abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_hybrid_cells_numbers_do_not_depend_on_its_neighbours(gemma_model, dtype):
    """As test_engine's #29 test, on hybrid attention: alone, in the full block, resumed, shuffled, without reuse."""
    import copy

    assert_cells_independent(gemma_model if dtype == torch.float32 else copy.deepcopy(gemma_model).to(torch.bfloat16),
                             alone=3)
