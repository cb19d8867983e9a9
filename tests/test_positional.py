"""Ms-PoE, the training-free positional reference arm (issue #28): the plain model bit for bit at ratio 1, position
interpolation at one ratio, the engine's cache and batching exact under it, and one line for a model it cannot
serve."""
from __future__ import annotations

import random

import pytest
import torch

from pausetune.core.positional import apply_ms_poe, group_ratios
from pausetune.core.io import PausetuneError

from test_engine import _cells, assert_cells_independent, assert_engine_equals_generate, small_llama


def _llama():
    return small_llama(layers=3)


@pytest.fixture(scope="module")
def ids():
    rng = random.Random(0)
    return torch.tensor([[1] + [rng.randrange(4, 320) for _ in range(400)]])


def _logits(model, ids, position_ids=None):
    with torch.no_grad():
        return model(input_ids=ids, position_ids=position_ids).logits


def test_group_ratios():
    assert group_ratios(3, 1.2, 1.8) == pytest.approx([1.2, 1.5, 1.8])
    assert group_ratios(1, 1.2, 1.8) == [1.2] and group_ratios(2, 1.0, 1.0) == [1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ratio_one_is_the_plain_model_bit_for_bit(ids, dtype):
    model = _llama().to(dtype)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    plain = _logits(model, ids, pos)
    handles = apply_ms_poe(model, {"ratio_min": 1.0, "ratio_max": 1.0, "from_layer": 0})
    assert torch.equal(_logits(model, ids, pos), plain)
    for h in handles:
        h.remove()
    assert torch.equal(_logits(model, ids, pos), plain)  # and removing the hooks restores the model


def test_one_ratio_everywhere_is_position_interpolation(ids):
    """Every group at ratio r from the first layer: the plain model given positions / r (RoPE's angle (m - n) / r),
    the same numbers; from layer 1 on: different ones (the first layer kept)."""
    model = _llama()
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    interpolated = _logits(model, ids, pos.float() / 1.5)
    handles = apply_ms_poe(model, {"ratio_min": 1.5, "ratio_max": 1.5, "from_layer": 0})
    assert torch.equal(_logits(model, ids, pos), interpolated)
    for h in handles:
        h.remove()
    apply_ms_poe(model, {"ratio_min": 1.5, "ratio_max": 1.5, "from_layer": 1})
    later = _logits(model, ids, pos)
    assert not torch.allclose(later, interpolated) and not torch.allclose(later, _logits(_llama(), ids, pos))


def test_groups_get_their_own_ratio(ids):
    """Two key-value groups at 1.2 and 1.8: each group's queries and keys carry their group's scaled angle, so the
    model equals neither one-ratio model, and swapping the two ratios changes it."""
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    outs = {}
    for lo, hi in ((1.2, 1.8), (1.8, 1.2), (1.2, 1.2), (1.8, 1.8)):
        model = _llama()
        apply_ms_poe(model, {"ratio_min": lo, "ratio_max": hi, "from_layer": 0})
        outs[lo, hi] = _logits(model, ids, pos)
    mixed = outs[1.2, 1.8]
    assert not any(torch.allclose(mixed, outs[k], atol=1e-4) for k in ((1.8, 1.2), (1.2, 1.2), (1.8, 1.8)))


@pytest.mark.parametrize("batch_size,reuse,chunk", [(1, True, 64), (3, True, 128), (2, False, 512)])
def test_engine_with_ms_poe_equals_generate(batch_size, reuse, chunk):
    """Cached keys rotated at their scaled positions, left-padded batches, chunked prefill: the engine's answers
    are `generate`'s on the same hooked model."""
    torch.set_num_threads(1)
    model = _llama()
    apply_ms_poe(model, {"ratio_min": 1.2, "ratio_max": 1.8, "from_layer": 1})
    rng = random.Random(1)
    stream = [rng.randrange(4, 320) for _ in range(900)]
    reqs = _cells(rng, stream, (200, 500, 800), (0, 50, 100), [1, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24])
    assert_engine_equals_generate(model, reqs, batch_size, reuse, chunk)


def test_ms_poe_cells_do_not_depend_on_their_neighbours():
    model = _llama().to(torch.bfloat16)
    apply_ms_poe(model, {"ratio_min": 1.2, "ratio_max": 1.8, "from_layer": 1})
    assert_cells_independent(model)


def test_a_model_it_cannot_serve_is_one_line():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=320, hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                               head_dim=16))
    with pytest.raises(PausetuneError, match="of type 'gemma3_text', not supported"):
        apply_ms_poe(gemma, {"ratio_min": 1.2, "ratio_max": 1.8, "from_layer": 2})
    with pytest.raises(PausetuneError, match=r"'eval.ms_poe.from_layer': 3, model '.*' has 3 layers"):
        apply_ms_poe(_llama(), {"ratio_min": 1.2, "ratio_max": 1.8, "from_layer": 3})
