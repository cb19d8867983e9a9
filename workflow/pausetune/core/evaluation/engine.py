"""Batched greedy generation with prefix-KV reuse: the eval engine.

A block of NIAH cells shares its haystack: every cell's prompt is `head + stream[:p] + needle + ...` with the
same `head` (chat template, system line) and the same token `stream` (one per seed and paused/plain), so the KV
cache of `head + stream[:P]` serves every cell whose first needle sits at or after `P`.

A cell's numbers are its own: whichever cells share its job, however the block was cut, resumed or ordered, a
cell's prompt is computed in chunks that end at the multiples of the *grain* `prefill_chunk` (and at the prompt's
end), and decoded in a batch of exactly `batch_size` rows. In bf16 (and, at 1e-6, in fp32) a GEMM's rounding
depends on its shape, so a cell prefilled in one chunk here and two there, or decoded with 2 rows here and 4 there,
would get other log-probs and sometimes other words under the same identity. So the engine

1. prefills one *trunk* (the longest shareable prefix of the block, cut down to a multiple of the grain) once;
2. takes the cells in decreasing order of the prefix they share with what the cache holds, and for each one
   crops the cache to the longest common token prefix cut down to a multiple of the grain (whole chunks are the
   same computation in every cell that has them), runs the rest of its prompt on top, and takes the first answer
   token from the last logits;
3. greedy-decodes up to `max_new_tokens` (stopping at EOS) in batches of exactly `batch_size` rows: each cell's
   cache is copied, left-padded, into one batch buffer; rows share the linear layers (a GEMM of a fixed row count
   gives each row the same bits whatever the other rows hold and whichever slot it takes: tests/test_engine.py)
   and never the attention (each live row attends over its own keys alone, no padding mask); a short group is
   filled with idle rows, and a row that reaches EOS idles in its slot (no attention, outputs ignored). With
   `batch_size` 1 the decode runs on the shared cache itself and is cropped back afterwards.
Both knobs are therefore part of a cell's identity (stage eval), while prefix reuse itself changes no bit.

Reuse is decided on token ids alone (longest common prefix with the cached ids: core.evaluation.kvcache.prefill_plan), so it
is correct by construction for any mix of requests: a request that shares nothing simply recomputes its whole prompt.

Three things make the CPU path faster than stock HF:
- The cache is a preallocated buffer (core.evaluation.kvcache.BufferCache): appending writes in place and cropping moves a length,
  instead of `torch.cat` copying the whole cache on every forward (which costs as much as a decode step on a CPU).
- A chunk of `q` new tokens on top of `past` cached ones needs a lower-right causal mask. HF builds it as an
  explicit `q x (past+q)` boolean mask, and SDPA with an explicit mask runs a kernel that computes every masked
  score (measured: 2K new on a 2K cache cost more than a fresh 4K causal prefill). The `pausetune` attention
  function instead splits the keys: the cached part needs no mask at all, the new part is plain upper-left
  causal (`is_causal=True`), and the two flash-attention outputs are merged exactly through their log-sum-exp.
  On CUDA it passes `torch.nn.attention.bias.causal_lower_right`, which the flash kernels take natively.
  Every other case (the trunk prefill, q = 1 decode steps, padded batches) goes to the stock SDPA function, so
  numerics there are exactly those of `model.generate`.
- The LM head runs on a 2D input (flat_head): a merged checkpoint's frozen head otherwise copies its whole
  transposed weight at every forward.

Measurements (a `Measure` on the request; stage eval's `eval.measure`), on the cache that holds the prompt, before
the decode, so no second prefill:
- `logprob`: each expected answer teacher-forced after the prompt (its first token scored from the prompt's last
  logits, the rest from one forward of answer[:-1] on top of the cache, which is cropped back afterwards): the
  summed and per-token log-probabilities, and the first token's rank (0 = the greedy choice) and margin (its
  log-prob minus the best other token's) in the first answer step.
- `attention`: the attention row of the last prompt token (the position that yields the first answer token), per
  layer and averaged over heads: that position is recomputed over the cached keys (its K/V are put back bit for
  bit afterwards), as the first token of the first answer's teacher-forced chunk (or alone, a q = 1 step, without
  `logprob`): the share of mass on the needles' tokens, on pause tokens, on the first `sink` tokens (the
  attention sink), and on the rest (disjoint, in that order of precedence, summing to 1).
  In a model with sliding-window layers the row of a sliding layer is zero before its window, the cell records each
  layer's type and the window, and the cell's summary shares read the full-attention layers only.

Hybrid attention (Gemma-3: five sliding-window layers, then one full layer). The buffer keeps every layer's keys,
so a prefix cropped for reuse is exact for sliding layers too; a sliding layer applies its window in attention
(query p sees keys p - window < k <= p, transformers' rule): decode steps read the last `window` keys, and a chunk
goes in query blocks that end at multiples of gcd(grain, window), each over its band of keys with an explicit mask
(_window_attention), so a query's numbers depend on its position alone. Equality with `generate`, full forwards
and eager attention is tested on a small random Gemma-3 (tests/test_gemma_engine.py) and the real Gemma-3-270M
(tests/test_gemma_real.py). Decoders with other layer kinds (chunked, linear attention) run each prompt alone
through transformers' own cache (_run_plain).
Cost: one short chunk per expected answer (one token longer for the first), about a decode step per token. Equal to a plain
full forward of prompt + answer and to an eager-attention forward's weights (tests/test_engine.py).

Equality with `model.generate(do_sample=False)` is tested (tests/test_engine.py) on the real SmolLM2 and the
tiny random model in fp32 on the CPU.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from ..kernels import attention_path, engine_linear, linear_kernels, warm_math_kernels
from .kvcache import BufferCache, crop_to, layer_windows, num_layers, prefill_plan

ATTN_NAME = "pausetune"
SINK_TOKENS = 4  # StreamingLLM's attention-sink width: the first 4 tokens draw mass whatever they say

_PROBE: list | None = None  # while a list: pausetune_attention appends (layer, head-mean row of query _PROBE_ROW)
_PROBE_ROW = 0
_ROWS: list | None = None  # during a batched decode step: (slot, first valid key) of each live row
_GRAIN: int | None = None  # during an engine run: the prefill grain (sliding layers' query blocks divide it)


# ---------------------------------------------------------------------------------------------------------
# Attention


def _split_lower_right_cpu(query, key, value, scaling):
    """Lower-right causal attention of q new tokens over past+q keys, via two mask-free flash calls.

    Returns [b, h, q, d] as a transposed view of a contiguous [b, q, h, d] tensor (the layout the caller wants).
    The merge is one `lerp` per element written straight into that layout: out = o2 + s * (o1 - o2) with
    s = sigmoid(lse1 - lse2), the exact log-sum-exp weight (fp32, on the small [b, h, q] part). The earlier merge
    (five elementwise passes over fp32 copies with mismatched layouts, then a transpose copy) cost as much as a
    flash call at 2K in bf16 (bench/attention.py, docs/benchmarks.md)."""
    b, h, q_len, d = query.shape
    kvh = key.shape[1]
    g = h // kvh
    past = key.shape[2] - q_len
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    # Cached keys: every new query sees all of them. Fold the GQA group into the query axis (no K/V copy).
    q_fold = query.reshape(b, kvh, g * q_len, d)
    o1, l1 = flash(q_fold, key[:, :, :past], value[:, :, :past], scale=scaling)[:2]
    o1 = o1.reshape(b, h, q_len, d)
    l1 = l1.reshape(b, h, q_len)
    # New keys: plain causal among the new tokens (upper-left alignment is right when q == kv).
    k2, v2 = key[:, :, past:], value[:, :, past:]
    if g > 1:
        k2 = k2.repeat_interleave(g, dim=1)
        v2 = v2.repeat_interleave(g, dim=1)
    o2, l2 = flash(query, k2, v2, is_causal=True, scale=scaling)[:2]
    s = torch.sigmoid(l1 - l2).unsqueeze(-1)  # the cached part's weight e^l1 / (e^l1 + e^l2), fp32
    out = torch.empty((b, q_len, h, d), dtype=query.dtype, device=query.device).transpose(1, 2)
    if query.dtype == torch.float32:
        return torch.lerp(o2, o1, s, out=out)
    return out.copy_(o2.float().lerp_(o1.float(), s))  # fp32 merge, one rounding (a bf16 weight costs an ulp)


def _rows_attention(query, key, value, scaling, window=None):
    """A batched decode step's attention, row by row: each live row (_ROWS) attends over its own valid keys only
    (the last `window` of them in a sliding layer), exactly as it would alone, so no row's numbers depend on the
    others; idle rows get zeros. [b, 1, h, d] out."""
    b, h, _, d = query.shape
    kvh = key.shape[1]
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu if query.device.type == "cpu" else None
    out = query.new_zeros((b, 1, h, d))
    first = key.shape[2] - window if window else 0
    for slot, off in _ROWS:
        off = max(off, first)
        q = query[slot:slot + 1].reshape(1, kvh, h // kvh, d)  # the GQA group on the query axis: no K/V copy
        k, v = key[slot:slot + 1, :, off:], value[slot:slot + 1, :, off:]
        o = flash(q, k, v, scale=scaling)[0] if flash else F.scaled_dot_product_attention(q, k, v, scale=scaling)
        out[slot, 0] = o.reshape(h, d)
    return out


def _window_attention(query, key, value, scaling, window: int, block: int):
    """Sliding-window causal attention of q new tokens on past cached ones: query p sees keys p - window < k <= p.

    The queries go in blocks that end at the multiples of `block` (absolute positions; the engine makes it divide
    the prefill grain), each over the keys [block start - window + 1, block end) with an explicit band mask, so a
    query's numbers depend on its position alone, not on where its chunk began. A block computes at most
    (block + window - 1) / window times the needed scores. Returns [b, q, h, d] (contiguous)."""
    b, h, q_len, d = query.shape
    kvh = key.shape[1]
    g = h // kvh
    kv_len = key.shape[2]
    past = kv_len - q_len
    out = torch.empty((b, q_len, h, d), dtype=query.dtype, device=query.device)
    p = past
    while p < kv_len:
        start = p // block * block
        e = min(kv_len, start + block)
        k0 = max(0, start - window + 1)
        diff = torch.arange(p, e, device=query.device)[:, None] - torch.arange(k0, e, device=query.device)[None, :]
        mask = (diff >= 0) & (diff < window)
        nq = e - p
        qf = query[:, :, p - past:e - past].reshape(b, kvh, g * nq, d)  # the GQA group on the query axis
        o = F.scaled_dot_product_attention(qf, key[:, :, k0:e], value[:, :, k0:e], attn_mask=mask.repeat(g, 1),
                                           scale=scaling)
        out[:, p - past:e - past] = o.reshape(b, h, nq, d).transpose(1, 2)
        p = e
    return out


@contextlib.contextmanager
def decode_rows(rows: list[tuple[int, int]]):
    """Within: a q = 1 step of pausetune attention attends row by row ((slot, first valid key) per live row)."""
    global _ROWS
    old, _ROWS = _ROWS, rows
    try:
        yield
    finally:
        _ROWS = old


def _query_row(query, key, scaling, i: int, window: int | None = None):
    """Causal softmax attention of new query i (of q new tokens on the cache) over the keys it sees (the last
    `window` in a sliding layer; zeros before them), mean over heads."""
    b, h, q_len, d = query.shape
    kvh = key.shape[1]
    end = key.shape[2] - q_len + i + 1
    lo = max(0, end - window) if window else 0
    q = query[:, :, i].float().reshape(b, kvh, h // kvh, d)
    k = key[:, :, lo:end].float()
    scale = scaling if scaling is not None else d ** -0.5
    scores = torch.einsum("bkgd,bknd->bkgn", q, k) * scale
    row = scores.softmax(-1).mean(dim=(1, 2))[0]
    return F.pad(row, (lo, 0)) if lo else row


@contextlib.contextmanager
def prefill_grain(grain: int):
    """Within: sliding layers cut their query blocks at multiples of gcd(grain, window) (see _window_attention)."""
    global _GRAIN
    old, _GRAIN = _GRAIN, grain
    try:
        yield
    finally:
        _GRAIN = old


@contextlib.contextmanager
def probing(row: int = 0):
    """Collect new query `row`'s attention row in every layer that runs inside (pausetune attention only)."""
    global _PROBE, _PROBE_ROW
    old, _PROBE = (_PROBE, _PROBE_ROW), []
    _PROBE_ROW = row
    try:
        yield _PROBE
    finally:
        _PROBE, _PROBE_ROW = old


def pausetune_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                        **kwargs):
    """Registered as attn_implementation 'pausetune'. Mask None means 'unpadded causal' (see module doc); the path
    a call takes is core.kernels.attention_path's. A sliding layer (`sliding_window`, which transformers passes to
    the attention function) whose keys reach further back than its window takes the window's own paths."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    window = sliding_window if sliding_window and kv_len > sliding_window else None
    if _PROBE is not None:
        _PROBE.append((getattr(module, "layer_idx", len(_PROBE)),
                       _query_row(query, key, scaling, _PROBE_ROW, window)))
    path = attention_path(query.device.type, q_len, kv_len, attention_mask is not None, dropout, _ROWS is not None)
    if path == "rows":
        return _rows_attention(query, key, value, scaling, window), None
    if window is not None:
        if attention_mask is not None or dropout:
            raise NotImplementedError("pausetune attention: a sliding-window layer with a padding mask or dropout")
        if q_len == 1:  # a decode step: the last `window` keys, no mask
            key, value = key[:, :, kv_len - window:], value[:, :, kv_len - window:]
            return sdpa_attention_forward(module, query, key, value, None, scaling=scaling, **kwargs)
        grain = _GRAIN or window
        return _window_attention(query, key, value, scaling, window, math.gcd(grain, window)), None
    if path == "split_cpu":
        return _split_lower_right_cpu(query, key, value, scaling).transpose(1, 2).contiguous(), None
    if path == "lower_right":
        from torch.nn.attention.bias import causal_lower_right

        g = query.shape[1] // key.shape[1]
        if g > 1:
            key = key.repeat_interleave(g, dim=1)
            value = value.repeat_interleave(g, dim=1)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=causal_lower_right(q_len, kv_len),
                                             scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def register_attention() -> None:
    from transformers import AttentionInterface

    # Deliberately NOT registered in AttentionMaskInterface: HF then builds no mask (None), except a 4D mask we
    # pass ourselves (padded batch decode), which HF hands through unchanged.
    AttentionInterface.register(ATTN_NAME, pausetune_attention)


@contextlib.contextmanager
def flat_head(model):
    """Within: the LM head folds its input's leading dims before its GEMM.

    Transformers calls the head on `hidden[:, -1:, :]`, a [b, 1, hidden] view of the whole chunk's states. For such
    a view torch's matmul folds the batch into one GEMM only when the weight requires grad (a loaded model's do);
    a merged checkpoint's frozen weight instead takes a batched GEMM that first copies the transposed
    [hidden, vocabulary] weight: 335 MB and 0.7 s per forward for Gemma-3's 262K vocabulary in bf16, every prefill
    chunk and decode step (measured: a tuned Gemma-3 eval job 4x slower than the base model's). On a 2D input
    F.linear runs the one GEMM whatever the flag, the one the base model already runs."""
    import torch.nn as nn

    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        yield
        return
    own = head.__dict__.get("forward")  # a patch already there (core.kernels.linear_kernels)
    inner = own or head.forward

    def forward(x):
        return inner(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)

    head.forward = forward
    try:
        yield
    finally:
        if own is not None:
            head.forward = own
        else:
            del head.forward


@contextlib.contextmanager
def attention_impl(model, name: str):
    old = model.config._attn_implementation
    if name != old:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if name != old:
            model.set_attn_implementation(old)


# ---------------------------------------------------------------------------------------------------------
# Engine


@dataclass
class Measure:
    """What to measure for one prompt beside its greedy answer (module doc)."""
    answers: list[list[int]]                        # token ids of each expected answer
    needles: list[tuple[int, int]]                  # [start, end) of each needle in the prompt
    pause_ids: list[int] = field(default_factory=list)  # the pause marker's ids (a sequence in text mode)
    sink: int = SINK_TOKENS
    logprob: bool = True
    attention: bool = True


@dataclass
class Request:
    key: Any
    ids: list[int]
    shareable: int = 0  # hint: length of the prefix this prompt likely shares with others (first needle position)
    measure: Measure | None = None


@dataclass
class Result:
    key: Any
    new_ids: list[int]
    timing: dict = field(default_factory=dict)
    measures: dict | None = None


def _r(x: float) -> float:
    return round(float(x), 7)


def pause_mask(ids: list[int], marker: list[int]) -> torch.Tensor:
    """Positions inside an occurrence of the pause marker's id sequence (one id in special/reserved mode; several in
    text mode, where a lone piece of the marker elsewhere in the text is not a pause)."""
    x = torch.as_tensor(ids)
    out = torch.zeros(len(ids), dtype=torch.bool)
    k = len(marker)
    if not k or len(ids) < k:
        return out
    hits = (x.unfold(0, k, 1) == torch.as_tensor(marker)).all(-1).nonzero().flatten()
    for j in range(k):
        out[hits + j] = True
    return out


def attention_shares(rows: torch.Tensor, ids: list[int], m: Measure, windows: list | None = None) -> dict:
    """Per-layer shares of the last prompt token's attention (rows: [layers, len(ids)], each summing to 1). With
    sliding-window layers among `windows` (core.evaluation.kvcache.layer_windows), each layer's type and the window
    are recorded too: a sliding layer's row is zero before its window."""
    n = len(ids)
    needle = torch.zeros(n, dtype=torch.bool)
    for s, e in m.needles:
        needle[s:e] = True
    pause = pause_mask(ids, list(m.pause_ids)) & ~needle
    sink = (torch.arange(n) < m.sink) & ~needle & ~pause
    rest = ~(needle | pause | sink)
    rows = rows.double().cpu()

    def share(mask):
        return rows[:, mask].sum(-1)

    nd = share(needle)
    token_share = float(needle.sum()) / n
    return {
        "layers": int(rows.shape[0]), "sink_tokens": int(m.sink),
        "needle": [_r(x) for x in nd], "pause": [_r(x) for x in share(pause)], "sink": [_r(x) for x in share(sink)],
        "rest": [_r(x) for x in share(rest)],
        "needle_ratio": [_r(x / token_share) if token_share else None for x in nd],
        "needle_token_share": _r(token_share), "pause_token_share": _r(float(pause.sum()) / n),
        "needle_each": [_r(rows[:, s:e].sum(-1).mean()) for s, e in m.needles],
        **({"layer_types": ["full" if w is None else "sliding" for w in windows],
            "window": max(w for w in windows if w is not None)} if windows and any(windows) else {}),
    }


def eos_ids_of(model, tokenizer) -> list[int]:
    ids = set()
    gen = getattr(model, "generation_config", None)
    for src in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if src is None:
            continue
        ids.update([src] if isinstance(src, int) else list(src))
    return sorted(ids)


class Engine:
    """Greedy answers for many prompts with one model, reusing KV across shared prefixes."""

    def __init__(self, model, eos_ids: Iterable[int], max_new_tokens: int, *, prefill_chunk: int, batch_size: int = 1,
                 reuse_prefix: bool = True, attn: str = ATTN_NAME, linear: str | dict | None = None):
        warm_math_kernels()  # before the first forward: see its doc (a model need not come from load_model)
        self.model = model
        p = next(model.parameters())
        self.linear = engine_linear(linear, p.dtype, p.device.type)  # fp32 on a CPU: MKL or oneDNN, per size
        self.attn = attn  # "sdpa": stock attention for chunks on a cache too (the bench's ablation)
        self.eos = sorted(set(int(i) for i in eos_ids))
        self.max_new = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self.windows = layer_windows(model)  # each layer's attention window (None: full); None: unsupported kinds
        self.buffer = self.windows is not None  # else: DynamicCache, each cell alone, decode batch 1
        self.reuse = bool(reuse_prefix) and self.buffer
        self.chunk = int(prefill_chunk)  # the grain: every chunk of a prompt ends at a multiple of it (or the end)
        if self.chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive number of tokens, got {prefill_chunk}")
        self.device = next(model.parameters()).device
        register_attention()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # -- low level ------------------------------------------------------------------------------------
    def _forward(self, ids: list[int], cache: Cache, start: int):
        """Run ids at positions start.. on top of the cache (which holds exactly `start` tokens), in chunks that
        end at the multiples of the grain (and at the end); the last position's logits."""
        logits = None
        s = 0
        while s < len(ids):
            e = min(len(ids), ((start + s) // self.chunk + 1) * self.chunk - start)
            x = torch.tensor([ids[s:e]], dtype=torch.long, device=self.device)
            pos = torch.arange(start + s, start + e, device=self.device).unsqueeze(0)
            out = self.model(input_ids=x, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1]
            s = e
        return logits

    def _decode(self, first: torch.Tensor, cache: Cache, lengths: list[int], offsets: list[int] | None):
        """Greedy loop. first: [b] first answer tokens (b = the batch buffer's rows, idle rows included); lengths:
        each real row's prompt length (its positions); offsets: each real row's first valid key in a left-padded
        batch buffer (None: one row on its own cache). Returns each real row's answer (its tokens through EOS, at
        most max_new), in row order.

        A row that finishes (EOS) idles in its slot: its attention is skipped and its outputs ignored, so the rows
        still decoding see the same GEMM shape at every step (their bits do not depend on when the others stop).
        Live rows per step are kept in `self.decode_rows` (the last call's). Per step only the model runs, a max
        into static buffers (the next input ids), one read-back and an in-place position increment. `max(-1)`
        gives argmax's index (the first maximal one) at a fifth of its cost on [b, vocab] rows (bf16, 4 x 49K)."""
        eos = frozenset(self.eos)
        n_real = len(lengths)
        answers = [[t] for t in first[:n_real].tolist()]
        live = [i for i in range(n_real) if answers[i][0] not in eos]
        self.decode_rows = []
        if self.max_new <= 1 or not live:
            return answers
        pos = torch.tensor([[lengths[i] if i < n_real else 0] for i in range(first.shape[0])], device=self.device)
        cur = first.unsqueeze(1).clone()
        best = None
        rows = None if offsets is None else [(i, offsets[i]) for i in live]  # read by pausetune attention
        n = 1
        with contextlib.ExitStack() as stack:
            if rows is not None:
                stack.enter_context(attention_impl(self.model, ATTN_NAME))
                stack.enter_context(decode_rows(rows))
            while True:
                logits = self.model(input_ids=cur, position_ids=pos, cache=cache, use_cache=True,
                                    logits_to_keep=1).logits[:, -1]
                self.decode_rows.append(len(live))
                if best is None:
                    best = torch.empty(cur.shape, dtype=logits.dtype, device=self.device)
                torch.max(logits, -1, keepdim=True, out=(best, cur))
                n += 1
                step = cur.flatten().tolist()
                for i in live:
                    answers[i].append(step[i])
                if n >= self.max_new:
                    break
                live = [i for i in live if answers[i][-1] not in eos]
                if not live:
                    break
                if rows is not None:
                    rows[:] = [(i, offsets[i]) for i in live]
                pos += 1
        return answers

    # -- public ----------------------------------------------------------------------------------------
    def linear_kernels(self):
        return linear_kernels(self.model, self.linear)

    @torch.inference_mode()
    def run(self, requests: list[Request]) -> Iterator[Result]:
        if not requests:
            return
        with self.linear_kernels(), flat_head(self.model):
            if not self.buffer:
                yield from self._run_plain(requests)
                return
            with attention_impl(self.model, self.attn), prefill_grain(self.chunk):
                yield from self._run_buffer(requests)

    def _run_plain(self, requests):
        """Models without a buffer cache (chunked or linear attention layers): each prompt prefilled alone, decoded
        alone."""
        from transformers import DynamicCache

        for r in requests:
            t0 = self._now()
            cache = DynamicCache(config=self.model.config)
            logits = self._forward(r.ids, cache, 0)
            t1 = self._now()
            meas = self._measure(r, logits, cache)
            tm = self._now()
            ans = self._decode(logits.argmax(-1), cache, [len(r.ids)], None)[0]
            t2 = self._now()
            yield Result(r.key, ans, {"prefill_s": t1 - t0, "decode_s": t2 - tm, "measure_s": tm - t1,
                                      "prompt_tokens": len(r.ids), "new_tokens": len(ans),
                                      "shared_prefix_tokens": 0, "trunk_prefill_s": 0.0, "batch": 1}, meas)

    def _run_buffer(self, requests):
        cap = max(len(r.ids) for r in requests) + self.max_new + 1
        cache = BufferCache(num_layers(self.model), cap)
        trunk, steps = prefill_plan([r.ids for r in requests], [r.shareable for r in requests], self.chunk,
                                    self.reuse)
        t0 = self._now()
        if trunk:
            self._forward(trunk, cache, 0)
        trunk_s = self._now() - t0
        for g in range(0, len(steps), self.batch_size):
            group = [(requests[i], keep) for i, keep in steps[g:g + self.batch_size]]
            lengths = [len(r.ids) for r, _ in group]
            batch, copy_s = None, 0.0
            firsts, timings, measures = [], [], []
            for row, (r, keep) in enumerate(group):
                cache.truncate(keep)
                t1 = self._now()
                logits = self._forward(r.ids[keep:], cache, keep)
                firsts.append(logits.argmax(-1))
                t2 = self._now()
                measures.append(self._measure(r, logits, cache))
                timings.append({"prefill_s": t2 - t1, "measure_s": self._now() - t2, "prompt_tokens": len(r.ids),
                                "shared_prefix_tokens": keep, "trunk_prefill_s": trunk_s, "batch": len(group)})
                if self.batch_size > 1:  # the batch-buffer copy counts as decode time
                    tc = self._now()
                    batch = batch or self._batch_cache(cache, lengths)
                    off = batch[1] - len(r.ids)
                    for src, dst in zip(cache.layers, batch[0].layers):
                        dst._k[row, :, off:batch[1]] = src.keys[0]
                        dst._v[row, :, off:batch[1]] = src.values[0]
                    copy_s += self._now() - tc
            t3 = self._now()
            if self.batch_size == 1:
                answers = self._decode(firsts[0], cache, lengths, None)
                cache.truncate(lengths[0])
            else:  # idle rows fill a short group: every decode step has batch_size rows
                pad = [firsts[0]] * (self.batch_size - len(group))
                answers = self._decode(torch.cat(firsts + pad), batch[0], lengths,
                                       [batch[1] - n for n in lengths])
                del batch
            dec = self._now() - t3 + copy_s
            for (r, _), ans, tm, meas in zip(group, answers, timings, measures):
                tm.update({"decode_s": dec, "new_tokens": len(ans)})
                yield Result(r.key, ans, tm, meas)

    def _measure(self, r: Request, logits: torch.Tensor, cache) -> dict | None:
        """The request's Measure on a cache holding exactly r.ids (left so afterwards); logits: the last prompt
        position's, [1, vocab]."""
        m = r.measure
        if m is None:
            return None
        n = len(r.ids)
        out: dict = {}
        attention = m.attention and self.buffer
        rows = None
        if m.logprob:
            lp0 = torch.log_softmax(logits[0].float(), -1)
            sums, per_token, ranks, margins = [], [], [], []
            for i, a in enumerate(m.answers):
                first = a[0]
                others = lp0.clone()
                others[first] = -float("inf")
                ranks.append(int((lp0 > lp0[first]).sum()))
                margins.append(_r(lp0[first] - others.max()))
                vals = [float(lp0[first])]
                if i == 0 and attention:  # the last prompt token again (its attention row), then the answer
                    lg, rows = self._probe_forward(r.ids[n - 1:] + a[:-1], cache, n)
                    lg = lg[1:]
                elif len(a) > 1:
                    x = torch.tensor([a[:-1]], dtype=torch.long, device=self.device)
                    pos = torch.arange(n, n + len(a) - 1, device=self.device).unsqueeze(0)
                    lg = self.model(input_ids=x, position_ids=pos, cache=cache, use_cache=True).logits[0]
                    crop_to(cache, n)
                if len(a) > 1:
                    lp = torch.log_softmax(lg.float(), -1)
                    idx = torch.arange(len(a) - 1, device=lp.device)
                    vals += lp[idx, torch.tensor(a[1:], device=lp.device)].tolist()
                per_token.append([_r(v) for v in vals])
                sums.append(_r(sum(vals)))
            out.update(answer_logprob=sums, answer_token_logprobs=per_token, needle_rank=ranks, needle_margin=margins)
        if attention:
            if rows is None:
                rows = self._probe_forward(r.ids[n - 1:], cache, n)[1]
            out["attention"] = attention_shares(rows, r.ids, m, self.windows)
        return out

    def _probe_forward(self, ids: list[int], cache, n: int):
        """Run ids at positions n-1.. (the last prompt token first) on a cache holding n tokens, recording that
        token's attention row per layer; the cache is left holding exactly its n tokens, bit for bit. Returns
        (logits of every position, [layers, n] attention rows)."""
        last = n - 1
        saved = [(layer.keys[:, :, last:n].clone(), layer.values[:, :, last:n].clone()) for layer in cache.layers]
        crop_to(cache, last)
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        pos = torch.arange(last, last + len(ids), device=self.device).unsqueeze(0)
        with attention_impl(self.model, ATTN_NAME), probing(0) as rows:
            lg = self.model(input_ids=x, position_ids=pos, cache=cache, use_cache=True).logits[0]
        crop_to(cache, n)
        for layer, (k, v) in zip(cache.layers, saved):
            layer.keys[:, :, last:n] = k
            layer.values[:, :, last:n] = v
        return lg, torch.stack([row for _, row in sorted(rows, key=lambda t: t[0])])

    def _batch_cache(self, like: BufferCache, lengths: list[int]):
        """A left-padded buffer of batch_size rows for decoding len(lengths) cells together (the rest idle), and
        the padded length (each row's keys end there)."""
        n_max = max(lengths)
        bc = BufferCache(len(like.layers), n_max + self.max_new + 1)
        for src, dst in zip(like.layers, bc.layers):
            dst.allocate(self.batch_size, src._k.shape[1], src._k.shape[3], src._v.shape[3], src._k.dtype,
                         src._k.device)
            dst._k.zero_()
            dst._v.zero_()
            dst._set_length(n_max)
        return bc, n_max


def is_oom(e: BaseException) -> bool:
    """Out of device (or host) memory, as torch raises it."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _sync_now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def generate_reference(model, ids: list[int], max_new_tokens: int, eos_ids: list[int]) -> tuple[list[int], float]:
    """The naive per-cell baseline: HF `generate`, greedy, stock attention. Returns new ids (through EOS)."""
    from transformers import GenerationConfig

    x = torch.tensor([ids], device=next(model.parameters()).device)
    gc = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_ids,
                          pad_token_id=eos_ids[0] if eos_ids else None)
    t0 = _sync_now(x.device)
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=gc)
    dt = _sync_now(x.device) - t0
    new = out[0, len(ids):].tolist()
    ans = []
    for t in new:
        ans.append(t)
        if t in eos_ids:
            break
    return ans, dt
