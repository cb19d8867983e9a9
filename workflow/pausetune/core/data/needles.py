"""Needle tasks: what goes into a cell's haystack, what is asked, and which facts the answer must contain.

Tasks are config (`tasks:` name -> spec); this module only instantiates them for one cell. Kinds:

- `single`: one needle (`needles[0]`) at the cell's depth; `expected[0]` lists the facts the answer must hold
  (the NIAH harness's San Francisco needle by default). With `bank: true` the needle, question and answer are
  drawn per cell from the evaluation bank (pausetune.core.data.banks), seeded like the RULER keys below, so each
  (length, depth) is measured with different facts and a fact the model memorised from the web is checkable.
- `multi`: the harness's multi-needle test: all `needles`, the first at the depth and the rest spread evenly from
  there to the end of the haystack; `expected[i]` are the facts of needle i (every fact of every needle counts).
- RULER-style key-value retrieval (Hsieh et al. 2024), needles from `template` ("One of the special magic
  numbers for {key} is: {value}."), keys from `key_words` (two distinct words joined by "-", e.g.
  "quiet-harbor"), values random `value_digits`-digit numbers (default 7), all drawn from a random generator
  seeded by (root seed, task name, cell seed, length, depth), so every cell has its own keys, reproducibly:
  - `multikey`: `num_keys` needles with distinct keys; the first (placed at the depth) is asked about
    (`question` with `{key}`), the others are distractors spread after it. One fact: its value.
  - `multivalue`: `num_values` needles for one key with distinct values; `question` (`{key}`) asks for all.
  - `multiquery`: `num_keys` needles with distinct keys; `num_queries` of them (a seeded choice) are asked
    for at once (`question` with `{keys}`, joined "a, b and c"). One fact per asked key.
- `variable_tracking` (RULER's variable tracking, multi-hop): `num_chains` chains (default 1) of `num_hops`
  (default 4) copies each: "VAR ABCDE = 12345." then "VAR FGHIJ = VAR ABCDE." ... (names: five random capital
  letters, all distinct; values `value_digits` digits, default 5, one per chain), seeded like the RULER kinds.
  The needles go hop by hop (every chain's first assignment, then every chain's first copy, ...), so each chain
  reads in order through the haystack; `question` (`{value}`) asks for every variable holding the first chain's
  value. Facts: that chain's `num_hops + 1` names (scored by recall); the other chains are distractors.
  Needles of every multi-needle kind are placed like `multi`.

Expected answers (`answers`, one per target needle: the text the per-cell log-probability is teacher-forced
on, see stage eval): for `single`/`multi` each needle's own sentence (the reference, which the model's answer
paraphrases: there is no canonical short answer), for the RULER kinds each asked value, for variable tracking
each variable name of the asked chain. `targets` are the indices of the needles that hold the asked facts (the
distractors are not targets): the needle whose attention share the cell measures.

A fact may list alternatives separated by "|" ("figs|fig"); see pausetune.scoring.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from ..config import task_spec
from ..design import KINDS
from ..io import PausetuneError


@dataclass
class TaskInstance:
    name: str
    kind: str
    needles: list[str]
    question: str
    facts: list[str]
    reference: str
    keys: dict = field(default_factory=dict)  # RULER: key -> values, and which keys were asked
    answers: list[str] = field(default_factory=list)  # expected answer text per target needle (module doc)
    targets: list[int] = field(default_factory=list)  # indices of the needles holding the asked facts

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "needles": self.needles, "question": self.question,
                "facts": self.facts, "reference": self.reference, **({"keys": self.keys} if self.keys else {}),
                "answers": self.answers, "targets": self.targets}


def cell_rng(root_seed: int, task: str, seed: int, length: int, depth: float) -> random.Random:
    from ..design import format_depth

    text = f"pausetune-task|{root_seed}|{task}|{seed}|{int(length)}|{format_depth(depth)}"
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


def _keys(rng: random.Random, words: list[str], n: int) -> list[str]:
    words = sorted(set(words))
    space = len(words) * (len(words) - 1)
    if n > space:
        raise PausetuneError(f"config key 'key_words': {len(words)} words make only {space} keys, {n} needed")
    out: list[str] = []
    while len(out) < n:
        a, b = rng.sample(words, 2)
        k = f"{a}-{b}"
        if k not in out:
            out.append(k)
    return out


def _values(rng: random.Random, digits: int, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
        if v not in out:
            out.append(v)
    return out


def _names(rng: random.Random, n: int, letters: int = 5) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(letters))
        if name not in out:
            out.append(name)
    return out


def _variable_tracking(name: str, spec: dict, rng: random.Random) -> TaskInstance:
    hops, chains = spec["num_hops"], spec["num_chains"]
    names = _names(rng, chains * (hops + 1))
    values = _values(rng, spec["value_digits"], chains)
    chain = [names[c * (hops + 1):(c + 1) * (hops + 1)] for c in range(chains)]
    needles, targets = [], []
    for h in range(hops + 1):
        for c in range(chains):
            prev = values[c] if h == 0 else f"VAR {chain[c][h - 1]}"
            if c == 0:
                targets.append(len(needles))
            needles.append(f"VAR {chain[c][h]} = {prev}.")
    return TaskInstance(name, "variable_tracking", needles, spec["question"].format(value=values[0]), chain[0],
                        " ".join(needles[i] for i in targets),
                        {"chains": {v: ch for v, ch in zip(values, chain)}, "asked": [values[0]]},
                        answers=list(chain[0]), targets=targets)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def build_task(name: str, spec: dict, root_seed: int, seed: int, length: int, depth: float,
               bank: list[dict] | None = None) -> TaskInstance:
    """One cell's task; `bank` is the evaluation bank, needed by tasks with `bank: true`."""
    check_task(name, spec)
    spec = task_spec(name, spec)
    kind = spec["kind"]
    if spec.get("bank"):
        if not bank:
            raise PausetuneError(f"config key 'tasks.{name}.bank': needs the evaluation bank (config 'banks')")
        row = bank[cell_rng(root_seed, name, seed, length, depth).randrange(len(bank))]
        return TaskInstance(name, kind, [row["needle"]], row["question"], [row["answer"]], row["needle"],
                            answers=[row["needle"]], targets=[0])
    if kind in ("single", "multi"):
        facts = [f for per_needle in spec["expected"] for f in per_needle]
        needles = list(spec["needles"])
        return TaskInstance(name, kind, needles, spec["question"], facts, " ".join(needles), answers=needles,
                            targets=list(range(len(needles))))
    rng = cell_rng(root_seed, name, seed, length, depth)
    if kind == "variable_tracking":
        return _variable_tracking(name, spec, rng)
    digits = spec["value_digits"]
    tpl = spec["template"]
    if kind == "multivalue":
        key = _keys(rng, spec["key_words"], 1)[0]
        values = _values(rng, digits, spec["num_values"])
        needles = [tpl.format(key=key, value=v) for v in values]
        return TaskInstance(name, kind, needles, spec["question"].format(key=key), values, " ".join(needles),
                            {"values": {key: values}, "asked": [key]}, answers=list(values),
                            targets=list(range(len(needles))))
    n = spec["num_keys"]
    keys = _keys(rng, spec["key_words"], n)
    values = _values(rng, digits, n)
    needles = [tpl.format(key=k, value=v) for k, v in zip(keys, values)]
    if kind == "multikey":
        asked = [0]
        question = spec["question"].format(key=keys[0])
    else:
        asked = sorted(rng.sample(range(n), spec["num_queries"]))
        question = spec["question"].format(keys=_join([keys[i] for i in asked]))
    return TaskInstance(name, kind, needles, question, [values[i] for i in asked],
                        " ".join(needles[i] for i in asked),
                        {"values": {k: [v] for k, v in zip(keys, values)}, "asked": [keys[i] for i in asked]},
                        answers=[values[i] for i in asked], targets=list(asked))


REQUIRED = {
    "single": ("needles", "question", "expected"),
    "multi": ("needles", "question", "expected"),
    "multikey": ("template", "question", "num_keys", "key_words"),
    "multivalue": ("template", "question", "num_values", "key_words"),
    "multiquery": ("template", "question", "num_keys", "num_queries", "key_words"),
    "variable_tracking": ("question",),
}


def check_task(name: str, spec: dict) -> None:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise PausetuneError(f"config key 'tasks.{name}.kind': unknown kind '{kind}'; known: {list(KINDS)}")
    if spec.get("bank"):
        if kind != "single":
            raise PausetuneError(f"config key 'tasks.{name}.bank': only kind 'single' draws from the bank")
        return
    for key in REQUIRED[kind]:
        if spec.get(key) in (None, [], ""):
            raise PausetuneError(f"config key 'tasks.{name}.{key}': required for kind '{kind}'")
    if kind in ("single", "multi"):
        if kind == "single" and len(spec["needles"]) != 1:
            raise PausetuneError(f"config key 'tasks.{name}.needles': kind 'single' takes exactly one needle")
        if len(spec["expected"]) != len(spec["needles"]):
            raise PausetuneError(f"config key 'tasks.{name}.expected': one list of facts per needle "
                                 f"({len(spec['needles'])} needles, {len(spec['expected'])} lists)")
    elif kind == "variable_tracking":
        if "{value}" not in spec["question"]:
            raise PausetuneError(f"config key 'tasks.{name}.question': must contain {{value}} (the value asked for)")
    else:
        for key in ("{key}", "{value}"):
            if key not in spec["template"]:
                raise PausetuneError(f"config key 'tasks.{name}.template': must contain {key}")
        if kind == "multiquery" and spec["num_queries"] > spec["num_keys"]:
            raise PausetuneError(f"config key 'tasks.{name}.num_queries': more queries than keys ({spec['num_keys']})")
        words = spec["key_words"]
        if len(set(words)) < 2:
            raise PausetuneError(f"config key 'tasks.{name}.key_words': needs at least two distinct words")
