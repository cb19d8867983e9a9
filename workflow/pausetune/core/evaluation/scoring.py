"""Scoring a cell's answer: deterministic fact recall by default, an optional LLM judge.

Deterministic (always computed, the default `score`):
- normalise(text): Unicode NFKC, lowercase, digit-group separators dropped ("1,234,567" -> "1234567"), every
  other punctuation or symbol character replaced by a space, whitespace runs collapsed to one space.
- A fact (one string of `expected`, e.g. "Dolores Park") is *found* when its normalised words appear in the
  normalised answer as a contiguous phrase on word boundaries ("park" is not found in "parking"). A fact may
  list alternatives separated by "|" ("figs|fig"): found when any alternative is.
- recall = found facts / all facts (0-1); score = 1 + 9 x recall (1 = nothing, 10 = everything, linear, the
  NIAH harness's 1-10 range); exact = every fact found.
This scores retrieval of the needle's facts, not wording: "eat a sandwich in Dolores Park when it is sunny"
scores 10, a verbatim copy of a different sentence scores 1.

Judge (config `eval.judge`, optional): an LLM grades the answer against the reference (the asked needles) on the
harness's 1/3/5/7/10 scale at temperature 0 (greedy), either a local model (a `models` entry, run with the eval
engine) or an OpenAI-compatible endpoint (`base_url`, `model`, key read from the environment variable named by
`api_key_env`; urllib, nothing else). The key is sent in the Authorization header only: it is never logged, never
put in an error message and never written into a cell. The judge's score becomes the cell's `score`
(`score_rule: judge`); recall and exact stay the deterministic ones, so both are always there.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata

from ..io import PausetuneError

_DIGIT_SEP = re.compile(r"(?<=\d)[,_](?=\d)")
_WS = re.compile(r"\s+")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _DIGIT_SEP.sub("", text)
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return _WS.sub(" ", text).strip()


def fact_found(fact: str, answer_norm: str) -> bool:
    hay = f" {answer_norm} "
    for alt in fact.split("|"):
        n = normalise(alt)
        if n and f" {n} " in hay:
            return True
    return False


def score_answer(answer: str, facts: list[str]) -> dict:
    """{recall, score, exact, facts_found}: the deterministic rule above."""
    if not facts:
        raise PausetuneError("scoring: a task with no expected facts cannot be scored")
    norm = normalise(answer)
    found = [fact_found(f, norm) for f in facts]
    recall = sum(found) / len(facts)
    return {"recall": round(recall, 6), "score": round(1 + 9 * recall, 4), "exact": all(found),
            "facts_found": found}


# ---------------------------------------------------------------------------------------------------------
# Judge

JUDGE_SYSTEM = "You grade answers to reading-comprehension questions. Reply with a single number."
JUDGE_RUBRIC = (
    "Grade how accurately the answer matches the reference, on this scale:\n"
    "1 - unrelated to the reference;\n"
    "3 - slightly relevant, but it does not agree with the reference;\n"
    "5 - fairly relevant, with inaccuracies;\n"
    "7 - agrees with the reference, with small omissions;\n"
    "10 - fully accurate and in complete agreement with the reference.\n"
    "Reply with the number only."
)


def judge_messages(question: str, reference: str, answer: str) -> list[dict]:
    user = (f"{JUDGE_RUBRIC}\n\nQuestion: {question}\nReference: {reference}\nAnswer: {answer}\n\nScore:")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_SCORE = re.compile(r"(?<![\d.])(10|[1-9])(?![\d.]*\d)")


def parse_judge_score(text: str) -> int | None:
    """The first integer 1-10 in the judge's reply ("Score: 7", "7/10" -> 7); None when there is none."""
    m = _SCORE.search(text or "")
    return int(m.group(1)) if m else None


def judge_openai(judge: dict, messages: list[dict], timeout: float = 60.0) -> str:
    import urllib.error
    import urllib.request

    env = judge["api_key_env"]
    key = os.environ.get(env)
    if not key:
        raise PausetuneError(f"config key 'eval.judge.api_key_env': environment variable {env} is not set")
    url = judge["base_url"].rstrip("/") + "/chat/completions"
    body = json.dumps({"model": judge["model"], "messages": messages, "temperature": 0, "max_tokens": 8}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise PausetuneError(f"judge endpoint {url}: HTTP {e.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise PausetuneError(f"judge endpoint {url}: unreachable ({type(e).__name__})") from None
    except json.JSONDecodeError:
        raise PausetuneError(f"judge endpoint {url}: reply is not JSON") from None
    try:
        return str(data["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        raise PausetuneError(f"judge endpoint {url}: unexpected reply shape") from None


class LocalJudge:
    """A `models` entry as judge: chat-templated rubric prompt, greedy (temperature 0), up to 8 new tokens."""

    def __init__(self, model, tokenizer, prefill_chunk: int, max_new_tokens: int = 8):
        from .engine import Engine, eos_ids_of

        self.tok = tokenizer
        self.engine = Engine(model, eos_ids_of(model, tokenizer), max_new_tokens, prefill_chunk=prefill_chunk)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            try:
                text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception:  # templates without a system role
                merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
                text = self.tok.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
            return self.tok.encode(text, add_special_tokens=False)
        text = "\n\n".join(m["content"] for m in messages) + " "
        return self.tok.encode(text, add_special_tokens=True)

    def __call__(self, messages: list[dict]) -> str:
        from .engine import Request

        res = next(iter(self.engine.run([Request(0, self.prompt_ids(messages))])))
        return self.tok.decode(res.new_ids, skip_special_tokens=True)


def judge_score(judge_cfg: dict, call, question: str, reference: str, answer: str) -> dict:
    """Run the judge; {score, raw, parsed}. `call(messages) -> text` (LocalJudge or an openai closure)."""
    raw = call(judge_messages(question, reference, answer))
    s = parse_judge_score(raw)
    return {"kind": judge_cfg["kind"], "model": judge_cfg.get("model"), "raw": raw.strip()[:200], "score": s,
            "parsed": s is not None}


# ---------------------------------------------------------------------------------------------------------
# A cell's score, from its stored answer: the one implementation eval and rescore share

def scoring_code() -> str:
    """Fingerprint of the code that scores (this module's import closure): stored in every cell as code.score."""
    from ..fingerprint import fingerprint

    return fingerprint(__name__)


def score_cell(cell: dict, judge_cfg: dict | None = None, judge_call=None) -> dict:
    """The cell with its score fields recomputed from `answer` and `facts` (and the judge when given a call)."""
    sc = score_answer(cell["answer"], cell["facts"])
    out = {k: v for k, v in cell.items() if k != "judge"}
    out.update(recall=sc["recall"], exact=sc["exact"], facts_found=sc["facts_found"], score=sc["score"],
               score_rule="recall", score_recall=sc["score"])
    if isinstance(cell.get("closed_book"), dict):  # the guess rate: the same facts, no haystack (never judged)
        cb = score_answer(cell["closed_book"]["answer"], cell["facts"])
        out["closed_book"] = {**cell["closed_book"], "recall": cb["recall"], "exact": cb["exact"],
                              "score": cb["score"]}
    if judge_call is not None:
        reference = cell.get("reference") or " ".join(cell["needles"])
        j = judge_score(judge_cfg, judge_call, cell["question"], reference, cell["answer"])
        out["judge"] = j
        if j["parsed"]:
            out["score"], out["score_rule"] = float(j["score"]), "judge"
    out["code"] = {**cell.get("code", {}), "score": scoring_code()}
    return out


def make_judge(config: dict, judge_model_dir=None, dtype: str = "auto", device: str | None = None):
    """The configured judge as `call(messages) -> text`, or None without `eval.judge` (eval and rescore share it)."""
    judge = config["eval"].get("judge")
    if not judge:
        return None
    if judge["kind"] == "openai":
        return lambda messages: judge_openai(judge, messages)
    if not judge_model_dir:
        raise PausetuneError(f"config key 'eval.judge': a local judge needs --judge-model-dir "
                             f"data/models/{judge.get('model')}")
    from ..models import load_model, load_tokenizer

    from ..config import EvalConfig

    return LocalJudge(load_model(judge_model_dir, dtype, device), load_tokenizer(judge_model_dir),
                      EvalConfig.of(config).prefill_chunk)
