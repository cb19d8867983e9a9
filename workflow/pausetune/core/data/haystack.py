"""Haystacks and prompts, in the tested model's own tokens.

Haystack stream. The haystack essays are the `haystack` part of `pausetune.shards.essay_split` over the essays
of `eval.haystack_sources` (the paragraph parquets, data/paragraphs/{source}/{method}.parquet, with the training
paragraph method): with `shards.holdout_haystack` those are exactly the essays the shards hold out of training
(membership depends only on (root seed, essay id)), so a tuned model never saw its haystack. They are shuffled
with the cell's seed, encoded paragraph by paragraph with `add_special_tokens=False` (pausetune.tokens: paragraph,
pause ids in the paused variants, "\\n\\n"), joined by "\\n\\n" and repeated in the same order until long enough.
One stream per (seed, paused): the haystack of every length is its start, so prompts share prefixes across
lengths and depths (what the engine's KV reuse feeds on), and the paused stream minus its pause ids is exactly
the plain stream.

Budget. `length` is the total number of prompt tokens the model sees; `context_tokens` reports it exactly, and
is never above `length`. The prompt is head + document + tail, where head/tail are the chat template (or
`prompt.plain_template`) around the document with the system line, the question and the instruction
(`overhead` = len(head) + len(tail)). The haystack takes H tokens:
- `eval.buffer: B` (default 200, the NIAH harness): H = length - B - needle tokens, and the prompt template plus
  `eval.max_new_tokens` must fit in B (else an error naming eval.buffer), so context_tokens = length - B +
  overhead and prompt + answer <= length;
- `eval.buffer: null` (exact): H = length - overhead - needle tokens, so context_tokens == length, and
  length + max_new_tokens must fit the model's window (checked in grid).

Placement (the harness's, in tokens). The needle goes at int(H x depth / 100) of the H haystack tokens, walked
back to the nearest sentence boundary; depth 100 appends it after the last haystack token. Multi-needle tasks
insert their needles one after the other into the growing token list at depth + i x (100 - depth) / k, exactly
as the harness does. A sentence boundary (config `eval.sentence_end`):
- `sentence` (default): the previous token's text, trailing whitespace stripped, ends with . ! or ? (closing
  quotes or brackets may follow), and the boundary is not inside a word: that token ends in whitespace, or the
  next token starts with whitespace, is a pause id, or there is none. So ".", ").", ".\\n\\n" (Llama-3 has such
  tokens) count, while "3.5", "e.g" and "ycombinator.com" do not.
- `harness`: the previous token is one of tokenizer.encode(".") (the harness's rule, exactly).
Position 0 is always a boundary. A paragraph end is a sentence end, so in paused haystacks the needle lands
between the paragraph's last period and its pause, never inside a pause (no pause token ends with a period).
Needles are encoded as `eval.needle_prefix` + needle (default " ", so "...end. The best thing..."; "" is the
harness's "...end.The best thing...").

No special token is ever inside the document: pieces are encoded with add_special_tokens=False; the chat
template text carries the model's own special tokens (encoded once, as `apply_chat_template` does), and a plain
template gets the tokenizer's BOS prefix once, at the very start.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ShardsConfig
from ..io import PausetuneError, read_parquet, sha256_file
from ..tokens import encode_paragraphs, separator_ids

PLACEHOLDER = "\u241fPAUSETUNE-DOCUMENT\u241f"
_END = re.compile(r"[.!?][\"'\)\]\u201d\u2019\u00bb]*$")


# ---------------------------------------------------------------------------------------------------------
# Essays and streams


def load_essays(paragraph_files: list[str]) -> list[tuple[str, list[str]]]:
    """(id, paragraphs) of every essay of the given paragraph parquets; ids "{source}/{essay id}"."""
    out = []
    for path in paragraph_files:
        df = read_parquet(path, columns=["id", "paragraphs"])
        source = Path(path).parent.name
        out.extend((f"{source}/{r.id}", list(r.paragraphs)) for r in df.itertuples(index=False))
    return out


def haystack_ids(all_ids: list[str], config: dict) -> list[str]:
    """The essays held out for the haystack, by the same rule as the training shards."""
    from .splits import essay_split

    try:
        ids = essay_split(list(all_ids), config["shards"], config["seed"])["haystack"]
    except PausetuneError:
        # essay_split refuses a split that leaves no training essays; the haystack part is the same rule.
        from .splits import _rank

        cfg = ShardsConfig.of(config)
        ids = sorted(i for i in all_ids if not cfg.holdout_haystack
                     or _rank(config["seed"], "haystack", i) < cfg.haystack_fraction)
    if not ids:
        raise PausetuneError("config key 'shards.haystack_fraction': no essay falls in the haystack split")
    return ids


def essay_order(ids: list[str], seed: int) -> list[str]:
    order = sorted(ids)
    random.Random(f"pausetune-haystack|{seed}").shuffle(order)
    return order


def build_stream(tokenizer, essays: dict[str, list[str]], order: list[str], min_tokens: int,
                 pause_ids: list[int] | None, memo: dict | None = None) -> list[int]:
    """Essays in `order`, repeated until at least min_tokens, joined by the paragraph separator."""
    sep = separator_ids(tokenizer)
    memo = {} if memo is None else memo
    ids: list[int] = []
    if not order:
        raise PausetuneError("haystack: no essays")
    i = 0
    while len(ids) < min_tokens:
        eid = order[i % len(order)]
        if eid not in memo:
            memo[eid] = encode_paragraphs(tokenizer, essays[eid], pause_ids or None, sep)[0]
        if ids:
            ids.extend(sep)
        ids.extend(memo[eid])
        i += 1
        if i > len(order) and len(ids) == 0:
            raise PausetuneError("haystack: essays encode to no tokens")
    return ids


def stream_meta(paragraph_files: list[str], order: list[str], method: str, paused: bool, pause_cfg: dict,
                pause_ids: list[int] | None = None) -> dict:
    """A cell's `haystack` field: which files, in which order, with which markers."""
    out = {"sources": sorted(Path(p).parent.name for p in paragraph_files),
           "files_sha256": {Path(p).parent.name: sha256_file(p) for p in paragraph_files},
           "essays": len(order),
           "order_sha256": hashlib.sha256("\n".join(order).encode()).hexdigest(),
           "paragraph_method": method, "paused": paused,
           "pause_mode": pause_cfg.get("mode") if paused else None}
    if pause_ids:
        out["pause_ids"] = list(pause_ids)
    return out


# ---------------------------------------------------------------------------------------------------------
# Sentence boundaries


class Boundaries:
    """Which insertion points count as sentence ends for one tokenizer (see module doc)."""

    def __init__(self, tokenizer, mode: str = "sentence", pause_ids: list[int] | None = None):
        self.mode = mode
        self.pause = set(pause_ids or [])
        if mode == "harness":
            self.ends = set(tokenizer.encode(".", add_special_tokens=False))
            self.ends_ws = set()
            self.starts_ws = set()
            return
        if mode != "sentence":
            raise PausetuneError(f"config key 'eval.sentence_end': unknown mode '{mode}'")
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
        special = set(tokenizer.all_special_ids)
        self.ends = {i for i, t in enumerate(texts) if i not in special and _END.search(t.rstrip())}
        self.ends_ws = {i for i in self.ends if texts[i][-1:].isspace()}
        self.starts_ws = {i for i, t in enumerate(texts) if t[:1].isspace()}

    def ok(self, ids: list[int], p: int) -> bool:
        if p <= 0:
            return True
        if ids[p - 1] not in self.ends:
            return False
        if self.mode == "harness":
            return True
        return (p >= len(ids) or ids[p - 1] in self.ends_ws or ids[p] in self.starts_ws or ids[p] in self.pause)

    def walk_back(self, ids: list[int], p: int) -> int:
        while p > 0 and not self.ok(ids, p):
            p -= 1
        return p


# ---------------------------------------------------------------------------------------------------------
# Prompts


def budget(length: int, ev: dict, needle_tokens: int, overhead: int, task: str = "") -> int:
    """Haystack tokens H for one cell (module doc); one-line errors naming the key."""
    buf = ev["buffer"]
    if buf is None:
        hay = length - overhead - needle_tokens
        what = f"prompt {overhead} + needles {needle_tokens}"
    else:
        if overhead + ev["max_new_tokens"] > buf:
            raise PausetuneError(
                f"config key 'eval.buffer': {buf} tokens cannot hold the prompt template ({overhead} tokens, task "
                f"'{task}') plus eval.max_new_tokens ({ev['max_new_tokens']}); raise it, or set it to null")
        hay = length - buf - needle_tokens
        what = f"buffer {buf} + needles {needle_tokens}"
    if hay < 1:
        raise PausetuneError(f"config key 'eval.lengths': length {length} leaves no haystack for task '{task}' "
                             f"({what} tokens); the needles are longer than the context")
    return hay


@dataclass
class CellPrompt:
    ids: list[int]
    head_tokens: int
    haystack_tokens: int
    needle_tokens: int
    needle_positions: list[int]     # token index of each needle's first token in the prompt (needle order)
    needle_depths: list[float]      # 100 x haystack tokens before the needle / H
    shareable: int                  # prompt prefix before the first needle: head + stream[:p]
    needle_lengths: list[int] = field(default_factory=list)  # tokens of each needle (needle order)
    question_start: int | None = None  # token index of the question's first token (None: the layout rewrote it)

    @property
    def needle_distances(self) -> list[int] | None:
        """Tokens from each needle's end to the question's first token (needle order): what separates the fact
        from the question, whatever the length and depth that put it there."""
        if self.question_start is None:
            return None
        return [self.question_start - (p + n) for p, n in zip(self.needle_positions, self.needle_lengths)]

    @property
    def depth_actual(self) -> float:
        return self.needle_depths[0]

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.ids).encode()).hexdigest()


def insert_needles(hay: list[int], needles: list[list[int]], depth: float, bounds: Boundaries):
    """The harness's placement; returns (document ids, start index of each needle in the document)."""
    doc = list(hay)
    starts: list[int] = []
    interval = (100 - depth) / len(needles)
    d = float(depth)
    for needle in needles:
        if d == 100:
            p = len(doc)
        else:
            p = bounds.walk_back(doc, int(len(doc) * (d / 100)))
        starts = [s + len(needle) if s >= p else s for s in starts]
        doc[p:p] = needle
        starts.append(p)
        d += interval
    return doc, starts


class PromptBuilder:
    """Head/tail token ids around the document, needle encoding, and full cell prompts for one tokenizer."""

    def __init__(self, tokenizer, config: dict, model: str, pause_ids: list[int] | None = None,
                 boundaries: bool = True, answer_pauses: list[int] | None = None):
        """pause_ids: the marker in the haystack (a needle never splits it); answer_pauses: ids put right after the
        question (the pause-before-answer variant), spliced into the template's own tokens, none re-encoded."""
        self.tok = tokenizer
        self.answer_pauses = list(answer_pauses or [])
        self.ev = config["eval"]
        self.prompt = config["prompt"]
        entry = config["models"][model]
        from ..models import check_chat_template

        check_chat_template(model, entry, tokenizer)  # a chat template asked of a tokenizer without one: an error
        self.chat = bool(entry["chat_template"])
        self.format = None
        self.bounds = Boundaries(tokenizer, self.ev["sentence_end"], pause_ids) if boundaries else None
        self._parts: dict[str, tuple[list[int], list[int]]] = {}
        self._question_at: dict[str, int | None] = {}

    def _render(self, question: str) -> str:
        system, instr = self.prompt["system"], self.prompt["instruction"]
        ask = f"{question} {instr}".strip()
        if not self.chat:
            self.format = "plain"
            bos = self._bos_text()
            return bos + self.prompt["plain_template"].format(system=system, document=PLACEHOLDER, question=question,
                                                              instruction=instr)
        attempts = [
            ("chat:system+document+question", [{"role": "system", "content": system},
                                               {"role": "user", "content": PLACEHOLDER},
                                               {"role": "user", "content": ask}]),
            ("chat:system+user", [{"role": "system", "content": system},
                                  {"role": "user", "content": f"{PLACEHOLDER}\n\n{ask}"}]),
            ("chat:user", [{"role": "user", "content": f"{system}\n\n{PLACEHOLDER}\n\n{ask}"}]),
        ]
        err = None
        for name, msgs in attempts:
            try:
                text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # templates that refuse a system role or two user turns in a row
                err = e
                continue
            self.format = name
            return text
        raise PausetuneError(f"chat template refuses every prompt layout ({type(err).__name__}: {err})")

    def _bos_text(self) -> str:
        with_special = self.tok("x", add_special_tokens=True)["input_ids"]
        plain = self.tok("x", add_special_tokens=False)["input_ids"]
        for k in range(len(with_special) - len(plain) + 1):
            if with_special[k:k + len(plain)] == plain:
                return self.tok.decode(with_special[:k]) if k else ""
        return ""

    def parts(self, question: str) -> tuple[list[int], list[int]]:
        if question not in self._parts:
            text = self._render(question)
            pieces = text.split(PLACEHOLDER)
            if len(pieces) != 2:
                raise PausetuneError("prompt template: the document must appear exactly once")
            head = self.tok.encode(pieces[0], add_special_tokens=False)
            tail = self.tok.encode(pieces[1], add_special_tokens=False)
            self._question_at[question] = self._token_at(pieces[1], tail, question)
            if self.answer_pauses:
                end = self._token_at(pieces[1], tail, question, end=True)
                if end is None:
                    raise PausetuneError(f"eval.answer_pauses: the question is not found in the prompt's tokens (a "
                                         f"template that rewrites it, or a tokenizer without offsets): '{question}'")
                tail = tail[:end] + self.answer_pauses + tail[end:]
            self._parts[question] = (head, tail)
        return self._parts[question]

    def _token_at(self, text: str, ids: list[int], needle: str, end: bool = False) -> int | None:
        """Index (in ids, the encoding of text) of the first token covering needle's first character (end: the
        first token after the one covering its last); None where the text does not hold it (a template that
        rewrites the question) or the tokenizer gives no offsets."""
        at = text.find(needle) if needle else -1
        if at < 0:
            return None
        try:
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, ValueError, TypeError):  # a slow tokenizer: no offsets
            return None
        if list(enc["input_ids"]) != list(ids):
            return None
        spans = enc["offset_mapping"]
        if end:
            last = at + len(needle)
            return next((i for i, (start, _) in enumerate(spans) if start >= last), len(ids))
        return next((i for i, (_, stop) in enumerate(spans) if stop > at), None)

    def question_offset(self, question: str) -> int | None:
        """The question's first token, counted from the tail's start."""
        self.parts(question)
        return self._question_at[question]

    def overhead(self, question: str) -> int:
        head, tail = self.parts(question)
        return len(head) + len(tail)

    def encode_needles(self, needles: list[str]) -> list[list[int]]:
        prefix = self.ev["needle_prefix"]
        return self.tok([prefix + n for n in needles], add_special_tokens=False)["input_ids"]

    def build(self, stream: list[int], length: int, depth: float, needles: list[str], question: str,
              task: str = "") -> CellPrompt:
        head, tail = self.parts(question)
        enc = self.encode_needles(needles)
        nt = sum(len(x) for x in enc)
        hay_n = budget(length, self.ev, nt, len(head) + len(tail), task)
        if len(stream) < hay_n:
            raise PausetuneError(f"haystack stream has {len(stream)} tokens, {hay_n} needed")
        doc, starts = insert_needles(stream[:hay_n], enc, depth, self.bounds)
        ids = head + doc + tail
        depths = []
        for i, s in enumerate(starts):
            before = s - sum(len(enc[j]) for j in range(len(enc)) if j != i and starts[j] < s)
            depths.append(round(100 * before / hay_n, 4))
        q_off = self.question_offset(question)
        return CellPrompt(ids=ids, head_tokens=len(head), haystack_tokens=hay_n, needle_tokens=nt,
                          needle_positions=[len(head) + s for s in starts], needle_depths=depths,
                          shareable=len(head) + min(starts), needle_lengths=[len(x) for x in enc],
                          question_start=None if q_off is None else len(head) + len(doc) + q_off)
