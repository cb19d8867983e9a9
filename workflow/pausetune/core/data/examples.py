"""Retrieval training examples: an essay context with needles hidden in it, a question, the answer (issue 17).

Why: the paper's pause-tuning was supervised needle retrieval, not a language-model loss on raw essays. An example
is built as the eval builds a cell, with the same code (pausetune.core.data.haystack: PromptBuilder for the template
around the document, Boundaries + insert_needles for the placement), so training and evaluation differ only in
the essays (training split here, haystack split there) and the needles (training bank vs evaluation bank).

Example i of split s draws, from a generator seeded by (root seed, s, i): its length L (uniform in
`examples.lengths`), its depth (uniform in `examples.depths`), `examples.needles` distinct triples of the training
bank (the first is asked about and placed at the depth, the others spread after it like the harness's multi
needle), and an essay order (the split's essays shuffled). Tokens, in the model's own:

    head + document + tail + reply + end

head/tail: the chat template (system / user = document + question + instruction, generation prompt) or the
authors' layout (`examples.authors_template`, a plain template with the tokenizer's BOS); reply: the needle
sentence or its answer word (`examples.answer`); end: the template's end-of-turn tokens (the EOS for a plain
layout), so the model learns to stop. The document is the plain essay stream (essays joined by the paragraph
separator, encoded paragraph by paragraph as everywhere) cut to exactly the tokens L leaves, with the needles
inserted on sentence boundaries. Without pause markers every example has exactly L tokens.

pause vs plain: placement is decided once on the plain document; the paused example is that document with the
pause ids inserted after every paragraph end (a needle placed at a paragraph end goes before the pause, as in the
eval's paused haystack). So the two variants hold the same essays, needles, depths, questions and answers, token
for token, and differ only by the pause ids (the column `pause_positions` says where).

The answer span [answer_start, answer_end) covers reply + end: the tokens that carry the loss under
`train.loss_on: answer`.
"""
from __future__ import annotations

import copy
import functools
import random
from pathlib import Path

from ..config import ExamplesConfig
from .haystack import Boundaries, PromptBuilder, insert_needles
from ..io import PausetuneError, quote
from ..tokens import encode_paragraphs, separator_ids

_PROBE = "\u241fPAUSETUNE-ANSWER\u241f"


def check_config(config: dict) -> None:
    """Config-level checks (while the DAG is built): the length range, the depths, the window of each tuned model.
    Under every train.objective: the examples of train.models are built under lm too (Snakemake's `all`, dvc.yaml)."""
    ex = ExamplesConfig.of(config)
    lo, hi = ex.lengths["min"], ex.lengths["max"]
    if lo > hi:
        raise PausetuneError(f"config key 'examples.lengths': min {lo} is above max {hi}")
    if ex.depths["min"] > ex.depths["max"]:
        raise PausetuneError("config key 'examples.depths': min is above max")
    for m in config["train"]["models"]:
        limit = config["models"][m].get("max_context")
        if limit and hi > limit:
            raise PausetuneError(f"config key 'examples.lengths.max': {hi} tokens exceeds models.{m}.max_context "
                                 f"{limit} (the model window)")


def check_window(config: dict, model: str, window: int) -> None:
    """The length range inside a prepared model's own window (check_config has only the config's max_context)."""
    hi = ExamplesConfig.of(config).lengths["max"]
    if hi > window:
        raise PausetuneError(f"config key 'examples.lengths.max': {hi} tokens exceeds the context window {window} of "
                             f"model '{model}'")


def check_examples_fit(config: dict, prepared_root) -> None:
    """The examples stage's checks in a tuned model's own tokens and window, for each model of train.models already
    prepared under `prepared_root`, while the DAG is built: Snakemake deletes the previous examples before their
    job could find out. The length range inside the window; the longest training needles inside lengths.min."""
    from .banks import bank
    from ..models import max_context, model_entry, prepared_tokenizer

    for m in config["train"]["models"]:
        mdir = Path(prepared_root) / m
        if (mdir / "prepared.json").exists():
            check_window(config, m, max_context(mdir, model_entry(config, m)))
            ExampleBuilder(prepared_tokenizer(mdir), config, m).check_fits(bank(config, "train"))


class ExampleBuilder:
    """Renders and places examples for one tokenizer; `pause_ids` None builds the plain variant."""

    def __init__(self, tokenizer, config: dict, model: str, pause_ids: list[int] | None = None):
        ex = ExamplesConfig.of(config)
        self.tok, self.ex, self.pause_ids = tokenizer, ex, list(pause_ids or [])
        cfg = copy.deepcopy(config)
        if ex.template == "authors":
            cfg["models"][model] = {**cfg["models"][model], "chat_template": False}
            cfg["prompt"] = {**cfg["prompt"], "plain_template": ex.authors_template}
        # placement on the plain document: boundaries without pause ids (the paused one is derived from it)
        self.prompts = PromptBuilder(tokenizer, cfg, model, None, boundaries=False)
        self.sentence_end = cfg["eval"]["sentence_end"]
        self.sep = separator_ids(tokenizer)
        self._memo: dict[str, tuple[list[int], list[int]]] = {}
        self.end_ids = self._end_ids()

    @functools.cached_property
    def bounds(self) -> Boundaries:
        """Sentence boundaries: a pass over the vocabulary (a second), which only building needs, not check_fits."""
        return Boundaries(self.tok, self.sentence_end, None)

    @property
    def layout(self) -> str:
        return "authors" if self.ex.template == "authors" else (self.prompts.format or "chat")

    def _end_ids(self) -> list[int]:
        """The template's end-of-turn tokens after an assistant reply (the EOS for a plain layout)."""
        tok = self.tok
        self.prompts.parts("?")  # sets the layout
        if self.prompts.chat:
            msgs = [{"role": "user", "content": "x"}]
            try:
                gen = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": _PROBE}], tokenize=False)
            except Exception:  # noqa: BLE001 - a template that cannot render a reply: fall back to EOS
                gen = full = ""
            if full.startswith(gen) and _PROBE in full:
                after = full.split(_PROBE, 1)[1]
                ids = tok.encode(after.rstrip(), add_special_tokens=False)
                if ids:
                    return ids
        return [tok.eos_token_id] if tok.eos_token_id is not None else []

    def reply_ids(self, triple: dict) -> list[int]:
        text = triple["needle"] if self.ex.answer == "needle" else triple["answer"]
        _, tail = self.prompts.parts(triple["question"])
        if tail and not self.tok.decode(tail[-1:])[-1:].isspace():
            text = " " + text
        return self.tok.encode(text, add_special_tokens=False)

    def fixed_tokens(self, triples: list[dict]) -> int:
        """Tokens of an example that are not haystack: template, needles, reply, end."""
        head, tail = self.prompts.parts(triples[0]["question"])
        needles = self.prompts.encode_needles([t["needle"] for t in triples])
        return len(head) + len(tail) + sum(map(len, needles)) + len(self.reply_ids(triples[0])) + len(self.end_ids)

    def check_fits(self, bank: list[dict]) -> None:
        """One line when the longest bank triple (with the k-1 longest others) leaves no haystack at lengths.min."""
        k = self.ex.needles
        lo = self.ex.lengths["min"]
        if k > len(bank):
            raise PausetuneError(f"config key 'examples.needles': {k} needles per example, the training bank has "
                                 f"only {len(bank)} triples")
        lens = [len(x) for x in self.prompts.encode_needles([t["needle"] for t in bank])]
        others = sorted(lens, reverse=True)[:k - 1] if k > 1 else []
        worst, which = -1, None
        for t, n in zip(bank, lens):
            need = self.fixed_tokens([t]) + sum(others)
            if need > worst:
                worst, which = need, t
        if worst >= lo:
            raise PausetuneError(
                f"config key 'examples.lengths.min': {lo} tokens cannot hold the template, {k} needle(s) and the "
                f"reply ({worst} tokens with training needle {quote(which['needle'])}); the needle is longer than the "
                f"context range, raise examples.lengths.min")

    def _essay(self, eid: str, paragraphs: list[str]) -> tuple[list[int], list[int]]:
        if eid not in self._memo:
            self._memo[eid] = encode_paragraphs(self.tok, paragraphs, None, self.sep)
        return self._memo[eid]

    def stream(self, essays: dict[str, list[str]], order: list[str], n: int) -> tuple[list[int], list[int]]:
        """The plain stream's first n tokens and the paragraph ends inside them (ends <= n)."""
        ids: list[int] = []
        ends: list[int] = []
        i = 0
        while len(ids) < n:
            if i >= 10 * len(order) + 10 and not ids:
                raise PausetuneError("examples: the training essays encode to no tokens")
            e_ids, e_ends = self._essay(order[i % len(order)], essays[order[i % len(order)]])
            if ids:
                ids.extend(self.sep)
            ends.extend(len(ids) + e for e in e_ends)
            ids.extend(e_ids)
            i += 1
        return ids[:n], [e for e in ends if e <= n]

    def build(self, rng: random.Random, essays: dict[str, list[str]], ids: list[str], bank: list[dict]) -> dict:
        """One example, all draws from `rng` (the same draws for the pause and plain builders)."""
        ex = self.ex
        length = rng.randint(ex.lengths["min"], ex.lengths["max"])
        depth = round(rng.uniform(float(ex.depths["min"]), float(ex.depths["max"])), 2)
        picks = rng.sample(range(len(bank)), ex.needles)
        order = sorted(ids)
        rng.shuffle(order)
        triples = [bank[i] for i in picks]
        head, tail = self.prompts.parts(triples[0]["question"])
        enc = self.prompts.encode_needles([t["needle"] for t in triples])
        reply = self.reply_ids(triples[0])
        hay_n = length - self.fixed_tokens(triples)
        if hay_n < 1:
            raise PausetuneError(f"config key 'examples.lengths.min': length {length} leaves no context for needle "
                                 f"{quote(triples[0]['needle'])}")
        hay, ends = self.stream(essays, order, hay_n)
        doc, starts = insert_needles(hay, enc, depth, self.bounds)
        hay_pos = [s - sum(len(enc[j]) for j in range(len(enc)) if starts[j] < s) for s in starts]
        pause_positions: list[int] = []
        if self.pause_ids:
            marks = sorted(e + sum(len(enc[j]) for j in range(len(enc)) if hay_pos[j] <= e) for e in ends)
            out: list[int] = []
            prev = 0
            for m in marks:
                out.extend(doc[prev:m])
                pause_positions.append(len(head) + len(out))
                out.extend(self.pause_ids)
                prev = m
            out.extend(doc[prev:])
            shift = [len(self.pause_ids) * sum(1 for m in marks if m <= s) for s in starts]
            starts = [s + d for s, d in zip(starts, shift)]
            doc = out
        input_ids = head + doc + tail + reply + self.end_ids
        a0 = len(head) + len(doc) + len(tail)
        return {"input_ids": input_ids, "answer_start": a0, "answer_end": len(input_ids), "length": length,
                "depth": depth, "needle_positions": [len(head) + s for s in starts],
                "needle_depths": [round(100 * p / hay_n, 4) for p in hay_pos], "bank_index": picks,
                "question": triples[0]["question"], "answer": triples[0]["answer"],
                "pause_positions": pause_positions}


def example_rng(seed: int, split: str, i: int) -> random.Random:
    return random.Random(f"pausetune-example|{seed}|{split}|{i}")
