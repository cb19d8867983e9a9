"""Reference arms (issue #28): pause-before-answer, the base model given pause markers right after the question and
nothing else (the prompt it gets on a real tokenizer), and both arms, with ms-poe, through Snakemake on the tiny
model (Ms-PoE's own tests: tests/test_positional.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import DEFAULT_CONFIG, ROOT, TINY_CONFIG


@pytest.mark.parametrize("layout,buffer", [("chat", 200), ("plain", 200), ("chat", None)])
def test_answer_pauses_follow_the_question(smollm2_dir, pg_paragraphs, layout, buffer):
    """SmolLM2's tokenizer, the real haystack: the prompt is the baseline's template tokens with exactly N pause ids
    spliced in after the question's last token (nothing re-encoded) and no pause anywhere else. With eval.buffer
    (the harness's reserve for the template) the haystack and everything up to the question are the baseline's and
    the pauses come out of the reserve; with buffer null the haystack gives up N tokens so the cell keeps its
    length."""
    from pausetune.core.config import load_config
    from pausetune.core.data.haystack import PromptBuilder, build_stream, essay_order, haystack_ids, load_essays
    from pausetune.core.models import load_tokenizer
    from pausetune.core.tokens import setup_pause

    overlay = {"models": {"smollm2": {"chat_template": layout == "chat"}}, "eval": {"buffer": buffer}}
    config = load_config([str(DEFAULT_CONFIG)], json.dumps(overlay))
    tok = load_tokenizer(smollm2_dir)
    pause = setup_pause(tok, config["pause"])
    n = config["eval"]["answer_pauses"]
    assert n == 10 and len(pause) == 1
    essays = dict(load_essays([str(pg_paragraphs)]))
    stream = build_stream(tok, essays, essay_order(haystack_ids(list(essays), config), 0), 1500, None)
    single = config["tasks"]["single"]
    plain = PromptBuilder(tok, config, "smollm2")
    paused = PromptBuilder(tok, config, "smollm2", answer_pauses=pause * n)
    head, tail = plain.parts(single["question"])
    head2, tail2 = paused.parts(single["question"])
    k = next(i for i in range(len(tail)) if tail2[i] != tail[i])
    assert head2 == head and tail2 == tail[:k] + pause * n + tail[k:]
    assert tok.decode(tail[:k]).rstrip().endswith(single["question"])  # right after the question ...
    assert single["question"][-6:] not in tok.decode(tail[k:])  # ... and not inside it
    for depth in (0, 50, 100):
        a = plain.build(stream, 1500, depth, single["needles"], single["question"])
        b = paused.build(stream, 1500, depth, single["needles"], single["question"])
        assert b.ids.count(pause[0]) == n and a.ids.count(pause[0]) == 0
        assert tok.decode(b.ids[b.question_start:]).lstrip().startswith(single["question"])
        if buffer is None:
            assert len(b.ids) == len(a.ids) and b.haystack_tokens == a.haystack_tokens - n
            assert b.question_start == a.question_start - n  # the document is n shorter
        else:
            assert len(b.ids) == len(a.ids) + n and b.haystack_tokens == a.haystack_tokens
            assert b.question_start == a.question_start and b.ids[:a.question_start] == a.ids[:a.question_start]


def test_answer_pauses_need_the_question_in_the_prompt(smollm2_dir):
    """A template that rewrites the question leaves nowhere to put the pauses: one line, not a silent no-op."""
    from pausetune.core.config import load_config
    from pausetune.core.data.haystack import PromptBuilder
    from pausetune.core.io import PausetuneError
    from pausetune.core.models import load_tokenizer

    overlay = {"models": {"smollm2": {"chat_template": False}},
               "prompt": {"plain_template": "{system}\n\n{document}\n\nQ: (asked below)\n{instruction}\nA:"}}
    config = load_config([str(DEFAULT_CONFIG)], json.dumps(overlay))
    tok = load_tokenizer(smollm2_dir)
    with pytest.raises(PausetuneError, match="eval.answer_pauses: the question is not found"):
        PromptBuilder(tok, config, "smollm2", answer_pauses=[7]).parts("What is the best thing to do?")


@pytest.mark.integration
def test_reference_arms_through_snakemake(tmp_path, pg_raw, pg_paragraphs, tiny_dir, smollm2_dir):
    """Both arms switched on in eval.variants beside baseline. pause-before-answer: its cells carry the count in
    their identity, their prompts the markers. ms-poe at ratio 1: the baseline's answers and measures exactly, under
    its own cell ids. Aggregate contrasts each with baseline; a new count or ratio reruns that arm's block only."""
    from helpers import job_counts, linked_workdir
    from pausetune.core.config import deep_merge

    cfg = deep_merge(yaml.safe_load(DEFAULT_CONFIG.read_text()), yaml.safe_load(TINY_CONFIG.read_text()))
    cfg["eval"] = {"models": ["tiny"], "variants": ["baseline", "pause-before-answer", "ms-poe"], "tasks": ["single"],
                   "lengths": [600], "depths": [0, 50, 100], "seeds": [0], "threads": 1, "prefill_chunk": 128,
                   "answer_pauses": 4, "ms_poe": {"ratio_min": 1.0, "ratio_max": 1.0, "from_layer": 0}}
    work = linked_workdir(tmp_path / "wf", pg_raw, pg_paragraphs, {"smollm2": smollm2_dir, "tiny": tiny_dir}, cfg)
    smk = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(work), "-c2"]  # 3 one-thread blocks

    def run(*args):
        p = subprocess.run([*smk, *args], capture_output=True, text=True, cwd=work)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        return p.stdout + p.stderr

    run("results/tables/summary.csv")
    cell = "results/eval/tiny/{}/single/seed0/len600/depth50.json"
    base, arm = (json.loads((work / cell.format(v)).read_text()) for v in ("baseline", "pause-before-answer"))
    # the default eval.buffer: the baseline's haystack and needle, 4 markers more after the question
    assert arm["context_tokens"] == base["context_tokens"] + 4 and arm["haystack_tokens"] == base["haystack_tokens"]
    assert arm["needle_positions"] == base["needle_positions"] and arm["needle_distance"] == base["needle_distance"]
    assert arm["cell_id"] != base["cell_id"]
    for d in (0, 50, 100):
        base, poe = (json.loads((work / f"results/eval/tiny/{v}/single/seed0/len600/depth{d}.json").read_text())
                     for v in ("baseline", "ms-poe"))
        assert poe["cell_id"] != base["cell_id"]
        for key in ("answer", "answer_logprob", "needle_attention", "context_tokens"):
            assert poe[key] == base[key], key
    import pandas as pd

    deltas = pd.read_csv(work / "results/tables/deltas.csv")
    for arm in ("pause-before-answer", "ms-poe"):
        row = deltas[(deltas.variant == arm) & (deltas.reference == "baseline")]
        assert len(row) == 1 and row.iloc[0]["n"] == 3
    for name, text in (("six.yaml", "eval: {answer_pauses: 6}"), ("ratio.yaml", "eval: {ms_poe: {ratio_max: 1.5}}")):
        (work / name).write_text(text + "\n")
        plan = job_counts(run("-n", "--configfile", "config/config.yaml", name, "--", "results/tables/summary.csv"))
        assert plan.get("eval") == 1 and plan.get("aggregate") == 1, (name, plan)  # that arm's block only


def test_budget_check_counts_the_answer_pauses(smollm2_dir):
    """The checks before any model loads count the markers: a buffer that holds the template but not 100 pauses
    besides is one line naming eval.buffer where the arm is in eval.variants, and passes where it is not."""
    from pausetune.core.checks import check_budgets
    from pausetune.core.config import load_config
    from pausetune.core.io import PausetuneError
    from pausetune.core.data.haystack import PromptBuilder
    from pausetune.core.models import load_tokenizer

    config = load_config([str(DEFAULT_CONFIG)])
    q = config["tasks"]["single"]["question"]
    fit = PromptBuilder(load_tokenizer(smollm2_dir), config, "smollm2").overhead(q) + config["eval"]["max_new_tokens"]
    ev = {"models": ["smollm2"], "tasks": ["single"], "buffer": fit + 20, "answer_pauses": 100}
    check_budgets(load_config([str(DEFAULT_CONFIG)], json.dumps({"eval": ev})), "smollm2", smollm2_dir)
    arm = load_config([str(DEFAULT_CONFIG)], json.dumps({"eval": {**ev, "variants": ["baseline", "pause-before-answer"]}}))
    with pytest.raises(PausetuneError, match=r"config key 'eval.buffer'"):
        check_budgets(arm, "smollm2", smollm2_dir)
    check_budgets(arm, "smollm2", smollm2_dir, answer_pauses=False)  # the baseline's blocks of that grid fit


def test_ms_poe_settings_are_checked_while_the_dag_is_built(data_project):
    """A from_layer past the prepared model's last layer, or a model type Ms-PoE cannot hook, is one line from
    check_eval (read from config.json, no torch), not a failure inside the eval job after the model has loaded."""
    from pausetune.core.checks import check_eval
    from pausetune.core.config import load_config
    from pausetune.core.io import PausetuneError

    root = data_project.path / "data" / "models"
    layers = json.loads((root / "smollm2" / "config.json").read_text())["num_hidden_layers"]

    def config(from_layer, variants=("baseline", "ms-poe"), model="smollm2"):
        ev = {"models": [model], "tasks": ["single"], "variants": list(variants),
              "ms_poe": {"ratio_min": 1.2, "ratio_max": 1.8, "from_layer": from_layer}}
        return load_config([str(DEFAULT_CONFIG)], json.dumps({"eval": ev}))

    check_eval(config(layers - 1), root)
    with pytest.raises(PausetuneError) as e:
        check_eval(config(layers), root)
    assert str(e.value) == (f"config key 'eval.ms_poe.from_layer': {layers}, model 'smollm2' has {layers} layers "
                            f"(none would change); expected 0 to {layers - 1}")
    check_eval(config(layers, variants=("baseline",)), root)  # only where the arm runs
