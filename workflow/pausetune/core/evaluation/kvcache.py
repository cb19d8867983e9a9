"""The KV cache a block's cells share, and the plan of what each cell borrows from it (core.evaluation.engine's doc says why
the plan cuts at whole chunks of the grain).

`BufferCache` is a preallocated buffer per layer: appending writes in place and cropping moves a length, instead of
`torch.cat` copying the whole cache on every forward (which costs as much as a decode step on a CPU).
`prefill_plan` decides reuse from token ids alone (longest common prefix with what the cache holds), so it is
correct by construction for any mix of prompts: one that shares nothing simply recomputes its whole prompt.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class BufferLayer(DynamicLayer):
    """A DynamicLayer backed by a preallocated buffer: in-place appends, O(1) crops, views as keys/values."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = int(capacity)
        self.length = 0
        self._k = self._v = None

    def allocate(self, batch: int, heads: int, head_dim: int, v_dim: int, dtype, device) -> None:
        self._k = torch.empty((batch, heads, self.capacity, head_dim), dtype=dtype, device=device)
        self._v = torch.empty((batch, heads, self.capacity, v_dim), dtype=dtype, device=device)
        self.device = device
        self.is_initialized = True
        self._set_length(0)

    def lazy_initialization(self, key_states, value_states) -> None:
        b, h, _, d = key_states.shape
        self.allocate(b, h, d, value_states.shape[-1], key_states.dtype, key_states.device)

    def _set_length(self, n: int) -> None:
        self.length = n
        self.keys = self._k[:, :, :n]
        self.values = self._v[:, :, :n]

    def _grow(self, need: int) -> None:
        cap = max(need, self.capacity * 2)
        k, v = self._k, self._v
        self._k = torch.empty((*k.shape[:2], cap, k.shape[3]), dtype=k.dtype, device=k.device)
        self._v = torch.empty((*v.shape[:2], cap, v.shape[3]), dtype=v.dtype, device=v.device)
        self._k[:, :, :self.length] = k[:, :, :self.length]
        self._v[:, :, :self.length] = v[:, :, :self.length]
        self.capacity = cap

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        end = self.length + n
        if end > self.capacity:
            self._grow(end)
        self._k[:, :, self.length:end] = key_states
        self._v[:, :, self.length:end] = value_states
        self._set_length(end)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:  # HF 5.x convention: negative = remove that many
            tokens_to_remove = -(self.length - tokens_to_remove)
        if self.is_initialized:
            self._set_length(max(0, self.length + tokens_to_remove))

    def truncate(self, n: int) -> None:
        if self.is_initialized:
            self._set_length(min(n, self.length))


class BufferCache(Cache):
    """A model's cache of BufferLayers (one per decoder layer), truncated to a length in O(1)."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[BufferLayer(capacity) for _ in range(num_layers)])

    def truncate(self, n: int) -> None:
        for layer in self.layers:
            layer.truncate(n)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length() if self.layers else 0


def num_layers(model) -> int:
    cfg = model.config.get_text_config(decoder=True)
    return int(cfg.num_hidden_layers)


def layer_windows(model) -> list[int | None] | None:
    """Each decoder layer's attention window (None: full causal attention), or None where some layer is of a kind
    the engine does not compute (chunked or linear attention). A sliding layer's query at position p sees the keys
    at p - window < k <= p (transformers' sliding_window_overlay), so its cache keeps every key and the window is
    applied in attention: a prefix cropped for reuse is exact for sliding layers too."""
    cfg = model.config.get_text_config(decoder=True)
    n = int(cfg.num_hidden_layers)
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types:
        if any(t not in ("full_attention", "sliding_attention") for t in types):
            return None
        if any(t == "sliding_attention" for t in types) and not window:
            return None
        return [int(window) if t == "sliding_attention" else None for t in types[:n]]
    if window and getattr(cfg, "use_sliding_window", True) is not False:
        return [int(window)] * n  # Mistral-style: every layer slides
    return [None] * n


def supports_buffer_cache(model) -> bool:
    """Decoders whose layers are full or sliding-window causal attention (what the engine's attention computes)."""
    return layer_windows(model) is not None


def crop_to(cache, n: int) -> None:
    """Keep the first n tokens of a cache (a BufferCache or an HF one)."""
    if hasattr(cache, "truncate"):
        cache.truncate(n)
    elif cache.get_seq_length() > n:
        cache.crop(n - cache.get_seq_length())  # HF 5.x: a negative count removes that many tokens


# ---------------------------------------------------------------------------------------------------------
# Prefill plan


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    ta = torch.as_tensor(a[:n])
    tb = torch.as_tensor(b[:n])
    diff = (ta != tb).nonzero()
    return int(diff[0, 0]) if len(diff) else n


def prefill_plan(prompts: list[list[int]], shareable: list[int], grain: int, reuse: bool = True
                 ) -> tuple[list[int], list[tuple[int, int]]]:
    """What the engine prefills for a block, from token ids alone: the trunk (the longest shareable prefix cut down to
    whole chunks of `grain`), then each prompt (index) in the order computed and the tokens it borrows from what the
    cache holds then: the common prefix with the prompt before it (or the trunk), cut down to whole chunks and to
    at most its length - 1. Without reuse: no trunk, nothing borrowed."""
    if not reuse:
        return [], [(i, 0) for i in range(len(prompts))]
    whole = lambda n: n // grain * grain
    lend = [whole(min(s, len(p) - 1)) for p, s in zip(prompts, shareable)]
    t = max(range(len(prompts)), key=lambda i: (lend[i], -i))
    trunk = list(prompts[t][:lend[t]])
    steps, cached = [], trunk
    for i in sorted(range(len(prompts)), key=lambda i: (-_lcp(trunk, prompts[i]), i)):
        steps.append((i, whole(min(_lcp(cached, prompts[i]), len(prompts[i]) - 1))))
        cached = prompts[i]
    return trunk, steps
