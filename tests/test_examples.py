"""Retrieval training (issue 17): needle banks, the `examples` stage, answer-only loss, the eval bank task, the
`brackets` paragraph method. Real tokenizer (SmolLM2's), the tiny random model, real PG essays, the real CLI.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULT_CONFIG, ROOT, TINY_CONFIG, run_cli

torch = pytest.importorskip("torch")

SMALL = {"examples": {"count": 12, "validation_count": 2, "lengths": {"min": 160, "max": 320}}}


def load_cfg(**over) -> dict:
    from pausetune.core.config import load_config

    return load_config([str(DEFAULT_CONFIG), str(TINY_CONFIG)], json.dumps(over))


def build(tiny_config, pg_paragraphs, tiny_dir, out: Path, variant: str, over: dict, check: bool = True, extra=()):
    return run_cli("examples", *tiny_config, "--config-json", json.dumps(over), "--inputs", str(pg_paragraphs),
                   "--model", "tiny", "--model-dir", str(tiny_dir), "--variant", variant, "--output", str(out),
                   *extra, check=check)


def both_arms(root: Path, tiny_config, pg_paragraphs, tiny_dir, over: dict, extra=()) -> dict[str, Path]:
    out = {}
    for variant in ("pause", "plain"):
        out[variant] = root / variant
        build(tiny_config, pg_paragraphs, tiny_dir, out[variant], variant, over, extra=extra)
    return out


@pytest.fixture(scope="module")
def examples(tmp_path_factory, tiny_config, pg_paragraphs, tiny_dir) -> dict[str, Path]:
    return both_arms(tmp_path_factory.mktemp("examples"), tiny_config, pg_paragraphs, tiny_dir, SMALL)


# Training seeds (issue #26): seed 1 of train.seeds [0, 1], both arms (the `examples` fixture is seed 0, the first).
SEEDS = {**SMALL, "train": {"seeds": [0, 1]}}


@pytest.fixture(scope="module")
def seed1(tmp_path_factory, tiny_config, pg_paragraphs, tiny_dir) -> dict[str, Path]:
    return both_arms(tmp_path_factory.mktemp("examples_tseed1"), tiny_config, pg_paragraphs, tiny_dir, SEEDS,
                     extra=["--train-seed", "1"])


def rows(folder: Path, split: str = "train") -> list[dict]:
    import datasets

    return list(datasets.load_from_disk(str(folder / "dataset"))[split])


def assert_same_but_the_markers(paused: list[dict], plain: list[dict], pid: list[int], tok, train_bank) -> int:
    """Row by row, a pause row is its plain row with the pause ids inserted at its pause positions, nothing else:
    the same tokens once they are taken out, the needle and the answer span where the markers before them shift
    them, both spans decoding to the bank's needle. Returns the number of markers."""
    n_pauses = 0
    for a, b in zip(paused, plain):
        assert len(b["input_ids"]) == b["length"] and 160 <= b["length"] <= 320  # exact, in model tokens
        assert len(a["input_ids"]) == b["length"] + len(pid) * len(a["pause_positions"])
        assert all(a["input_ids"][p:p + len(pid)] == pid for p in a["pause_positions"])
        n_pauses += len(a["pause_positions"])
        stripped = list(a["input_ids"])
        for p in reversed(a["pause_positions"]):
            del stripped[p:p + len(pid)]
        assert stripped == b["input_ids"]  # identical but for the pause markers, token for token
        assert pid[0] not in b["input_ids"]
        assert a["bank_index"] == b["bank_index"] and a["length"] == b["length"]
        before = lambda pos: len(pid) * sum(1 for q in a["pause_positions"] if q < pos)  # noqa: E731
        assert a["answer_start"] - b["answer_start"] == before(a["answer_start"]) == len(pid) * len(a["pause_positions"])
        assert [p - before(p) for p in a["needle_positions"]] == b["needle_positions"]
        triple = train_bank[b["bank_index"][0]]
        for r in (a, b):
            span = tok.decode(r["input_ids"][r["answer_start"]:r["answer_end"]])
            assert span == triple["needle"] + "<|im_end|>"  # the reply and its end-of-turn, nothing else
            assert r["answer_end"] == len(r["input_ids"])
            assert tok.decode(r["input_ids"][:r["answer_start"]]).endswith("<|im_start|>assistant\n")
            needle = tok.encode(" " + triple["needle"], add_special_tokens=False)
            p = r["needle_positions"][0]
            assert r["input_ids"][p:p + len(needle)] == needle
            assert triple["question"] in tok.decode(r["input_ids"][p + len(needle):r["answer_start"]])
    return n_pauses


# ------------------------------------------------------------------------------------------------- banks
def test_banks_are_large_varied_seeded_and_disjoint():
    from pausetune.core.data.banks import CLASSIC, TEMPLATES, check_banks, generate

    cfg = load_cfg()
    train, evalb = check_banks(cfg)
    assert len(train) >= 300 and len(evalb) >= 50
    assert len({r["needle"] for r in train}) == len(train) and len({r["question"] for r in train}) == len(train)
    # varied facts: every template contributes, none dominates
    per = [sum(1 for r in train if r["question"].startswith(q.split("{")[0]) and q.split("}")[-1] in r["question"])
           for _, q, _, _ in TEMPLATES]
    assert min(per) > 0 and max(per) < len(train) / 3
    low = lambda rs, k: {r[k].casefold() for r in rs}  # noqa: E731
    assert not low(train, "needle") & low(evalb + CLASSIC, "needle")
    assert not low(train, "answer") & low(evalb + CLASSIC, "answer")
    assert generate("train", 300, 0) == train and generate("train", 300, 1) != train  # seeded by the root seed


def test_bank_overlap_and_empty_bank_are_one_line_errors(tiny_config, pg_paragraphs, tiny_dir, tmp_path):
    from pausetune.core.data.banks import check_banks
    from pausetune.core.io import PausetuneError

    sf = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
    bad = {"banks": {"train": {"size": 300, "extra": [{"needle": sf, "question": "Q?", "answer": "park"}]}}}
    with pytest.raises(PausetuneError, match=r"^config key 'banks.train.extra': training needle .*San Francisco"):
        check_banks(load_cfg(**bad))
    evalb = check_banks(load_cfg())[1]
    same_answer = {"banks": {"train": {"extra": [{"needle": "Zed hid it in the shed.", "question": "Where?",
                                                  "answer": evalb[0]["answer"]}]}}}
    with pytest.raises(PausetuneError, match=r"training answer .* is also an answer of the evaluation bank"):
        check_banks(load_cfg(**same_answer))
    with pytest.raises(PausetuneError, match=r"^config key 'banks.train': the training needle bank is empty"):
        check_banks(load_cfg(banks={"train": {"size": 0}}))
    # the same, from the CLI: one line, before anything is built
    proc = build(tiny_config, pg_paragraphs, tiny_dir, tmp_path / "x", "plain", {"banks": {"train": {"size": 0}}},
                 check=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "bank is empty" in proc.stderr
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------- examples
def test_examples_exact_lengths_answer_span_and_pause_plain_identical(examples):
    from transformers import AutoTokenizer

    from pausetune.core.data.banks import bank

    tok = AutoTokenizer.from_pretrained(examples["pause"] / "tokenizer")
    m = json.loads((examples["pause"] / "manifest.json").read_text())
    pid = m["pause_ids"]
    train_bank = bank(load_cfg(**SMALL), "train")
    assert m["objective"] == "retrieval" and m["banks"]["train"]["sha256"] and m["lengths"] == {"min": 160, "max": 320}
    assert m["train_seed"] == 0  # train.seeds' first, without --train-seed
    n_pauses = 0
    for split in ("train", "validation"):
        paused, plain = rows(examples["pause"], split), rows(examples["plain"], split)
        assert len(paused) == len(plain) == {"train": 12, "validation": 2}[split]
        n_pauses += assert_same_but_the_markers(paused, plain, pid, tok, train_bank)
    assert n_pauses > 0  # short contexts may hold no paragraph end; the set holds many
    # essays: training split only
    assert not set(m["haystack_essays"]) & set(m["splits"]["train"]["order"] + m["splits"]["validation"]["order"])


def test_examples_are_deterministic(examples, tiny_config, pg_paragraphs, tiny_dir, tmp_path):
    build(tiny_config, pg_paragraphs, tiny_dir, tmp_path / "again", "plain", SMALL)
    assert rows(tmp_path / "again") == rows(examples["plain"])
    other = {"seed": 1, **SMALL}
    build(tiny_config, pg_paragraphs, tiny_dir, tmp_path / "seed1", "plain", other)
    assert [r["input_ids"] for r in rows(tmp_path / "seed1")] != [r["input_ids"] for r in rows(examples["plain"])]


def test_a_training_seed_draws_its_own_training_examples_on_the_same_split(examples, seed1):
    """Training seed 1 draws other training rows than seed 0 from the same training essays and banks; the validation
    rows, the essay split and the eval haystack essays are the root seed's, the same for every training seed."""
    for variant in ("pause", "plain"):
        m0, m1 = (json.loads((f / "manifest.json").read_text()) for f in (examples[variant], seed1[variant]))
        assert (m0["train_seed"], m1["train_seed"]) == (0, 1) and m0["seed"] == m1["seed"] == 0
        for key in ("banks", "haystack_essays", "lengths", "pause_ids"):
            assert m0[key] == m1[key], (variant, key)
        assert m0["splits"]["validation"] == m1["splits"]["validation"]  # the same rows, so the same counts
        assert {k: m0["splits"]["train"][k] for k in ("essays", "order", "rows")} == \
            {k: m1["splits"]["train"][k] for k in ("essays", "order", "rows")}  # the same training essays
        a, b = rows(examples[variant]), rows(seed1[variant])
        assert len(a) == len(b) == 12
        assert not {tuple(r["input_ids"]) for r in a} & {tuple(r["input_ids"]) for r in b}, variant
        assert rows(examples[variant], "validation") == rows(seed1[variant], "validation")


def test_pause_and_plain_examples_of_one_training_seed_differ_only_by_the_markers(seed1):
    from transformers import AutoTokenizer

    from pausetune.core.data.banks import bank

    tok = AutoTokenizer.from_pretrained(seed1["pause"] / "tokenizer")
    pid = json.loads((seed1["pause"] / "manifest.json").read_text())["pause_ids"]
    train_bank = bank(load_cfg(**SEEDS), "train")
    n_pauses = 0
    for split in ("train", "validation"):
        paused, plain = rows(seed1["pause"], split), rows(seed1["plain"], split)
        assert len(paused) == len(plain) == {"train": 12, "validation": 2}[split]
        n_pauses += assert_same_but_the_markers(paused, plain, pid, tok, train_bank)
    assert n_pauses > 0


def test_a_training_seed_outside_train_seeds_is_one_line(tiny_config, pg_paragraphs, tiny_dir, tmp_path):
    proc = build(tiny_config, pg_paragraphs, tiny_dir, tmp_path / "x", "pause", SEEDS, check=False,
                 extra=["--train-seed", "2"])
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "pausetune examples: error: --train-seed 2: not in config key 'train.seeds' [0, 1]"], proc.stderr
    assert not (tmp_path / "x").exists()


def test_authors_template_and_answer_word(tiny_config, pg_paragraphs, tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    over = {"examples": {**SMALL["examples"], "count": 2, "validation_count": 0, "template": "authors",
                         "answer": "answer"}}
    build(tiny_config, pg_paragraphs, tiny_dir, tmp_path / "a", "plain", over)
    tok = AutoTokenizer.from_pretrained(tmp_path / "a" / "tokenizer")
    r = rows(tmp_path / "a")[0]
    text = tok.decode(r["input_ids"])
    assert text.index("###Instruction:\n") < text.index("###Context:\n") < text.index("###User:\n") \
        < text.index("###Assistant:\n")
    assert len(r["input_ids"]) == r["length"]
    assert tok.decode(r["input_ids"][r["answer_start"]:]) == \
        text.split("###Assistant:\n")[1] and r["input_ids"][-1] == tok.eos_token_id


def test_needle_longer_than_range_and_range_above_window_fail_before_building(tiny_config, pg_paragraphs, tiny_dir,
                                                                             tmp_path):
    short = {"examples": {"lengths": {"min": 40, "max": 60}}}
    proc = build(tiny_config, pg_paragraphs, tiny_dir, tmp_path / "s", "pause", short, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "config key 'examples.lengths.min'" in proc.stderr and "longer than the context range" in proc.stderr
    wide = {"examples": {"lengths": {"min": 200, "max": 5000}}}  # tiny's window: 4096
    proc = build(tiny_config, pg_paragraphs, tiny_dir, tmp_path / "w", "pause", wide, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "config key 'examples.lengths.max'" in proc.stderr and "window" in proc.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------------- training
def test_loss_mask_and_head_only_on_loss_positions(examples, tiny_dir):
    from pausetune.core.training.lora import build_model
    from pausetune.core.training.objectives import collate, masked_loss

    torch.set_num_threads(2)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(examples["plain"] / "tokenizer")
    cfg = load_cfg()["train"]
    torch.manual_seed(0)
    model, _ = build_model(tiny_dir, tok, cfg, None, None, "cpu")
    batch = rows(examples["plain"])[:2]
    ids, mask, labels = collate(batch, tok.eos_token_id, "answer")
    for i, r in enumerate(batch):
        keep = (labels[i] != -100).nonzero().flatten().tolist()
        assert keep == list(range(r["answer_start"], r["answer_end"]))  # the answer span, nothing else
        assert mask[i].sum() == len(r["input_ids"])
    model.eval()
    with torch.no_grad():
        total, n = masked_loss(model, ids, mask, labels)
        ref = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    assert n == sum(r["answer_end"] - r["answer_start"] for r in batch)
    assert abs(float(total) / n - float(ref)) < 1e-4
    _, _, all_labels = collate(batch, tok.eos_token_id, "all")
    assert int((all_labels != -100).sum()) == sum(len(r["input_ids"]) - 1 for r in batch)


def test_unpadded_rows_give_the_padded_batch_step(examples, tiny_dir):
    """Retrieval runs each row of a micro-batch alone at its real length (no padding, no mask): the same loss and
    gradients as the padded batch, to fp32 rounding (issue #25)."""
    from pausetune.core.training.lora import build_model, make_optimizer
    from pausetune.core.training.objectives import PaddedRetrieval, Retrieval, collate, train_step, validation_loss

    torch.set_num_threads(2)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(examples["pause"] / "tokenizer")
    m = json.loads((examples["pause"] / "manifest.json").read_text())
    cfg = load_cfg(train={"lr": 1e-2, "warmup_steps": 0, "scheduler": "constant", "max_steps": 3,
                          "objective": "retrieval"})["train"]
    rs = rows(examples["pause"])[:4]
    lengths = [len(r["input_ids"]) for r in rs]
    assert len(set(lengths)) > 1  # the batch really pads
    batches = [collate(rs[:2], tok.eos_token_id, "answer"), collate(rs[2:], tok.eos_token_id, "answer")]
    pieces = [p for b in batches for p in Retrieval.pieces(b)]
    assert [p[0].shape[1] for p in pieces] == lengths and all(p[1] is None for p in pieces)
    assert all(p[0][0].tolist() == r["input_ids"] for p, r in zip(pieces, rs))  # each row whole, nothing padded
    out = []
    for objective in (PaddedRetrieval, Retrieval):
        torch.manual_seed(0)
        model, _ = build_model(tiny_dir, tok, cfg, m["pause_ids"], "special", "cpu")
        opt, sched = make_optimizer(model, cfg)
        steps = [train_step(model, batches, opt, sched, 1.0, objective) for _ in range(3)]
        val = validation_loss(model, batches, objective)
        out.append((steps, val, {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}))
    (s0, v0, p0), (s1, v1, p1) = out
    for a, b in zip(s0, s1):
        assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == pytest.approx(b[1], rel=1e-4) and a[2] == b[2]
    assert v0 == pytest.approx(v1, rel=1e-5)
    assert all(torch.allclose(p0[k], p1[k], atol=1e-5, rtol=1e-4) for k in p0)


def test_retrieval_training_answer_loss_falls(examples, tiny_dir, tiny_config, tmp_path):
    from pausetune.core.training.objectives import Retrieval, collate, train_step
    from pausetune.core.training.lora import build_model, make_optimizer

    torch.set_num_threads(2)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(examples["pause"] / "tokenizer")
    m = json.loads((examples["pause"] / "manifest.json").read_text())
    cfg = load_cfg(train={"lr": 1e-2, "warmup_steps": 0, "scheduler": "constant", "max_steps": 12,
                          "objective": "retrieval"})["train"]
    torch.manual_seed(0)
    model, info = build_model(tiny_dir, tok, cfg, m["pause_ids"], "special", "cpu")
    opt, sched = make_optimizer(model, cfg)
    batch = [collate(rows(examples["pause"])[:2], tok.eos_token_id, "answer")]
    losses = [train_step(model, batch, opt, sched, 1.0, Retrieval)[0] for _ in range(12)]
    assert losses[-1] < losses[0] - 0.5 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert info["pause_row"]["trained"]

    # the real CLI: a short retrieval run, its manifest says what it trained on
    out = tmp_path / "ckpt"
    over = {**SMALL, "train": {"objective": "retrieval", "max_steps": 2, "warmup_steps": 0, "grad_accum": 1,
                               "threads": 2}}
    run_cli("train", *tiny_config, "--config-json", json.dumps(over), "--model", "tiny", "--variant", "pause",
            "--model-dir", str(tiny_dir), "--examples", str(examples["pause"]), "--output", str(out), "--no-progress")
    cm = json.loads((out / "manifest.json").read_text())
    assert cm["objective"] == "retrieval" and cm["loss_on"] == "answer" and cm["steps"] == 2
    assert cm["retrieval"]["banks"] == m["banks"] and cm["retrieval"]["lengths"] == m["lengths"]
    assert cm["examples"]["train_rows"] == 12 and cm["final_val_loss"] is not None
    # objective and data must agree: one line
    proc = run_cli("train", *tiny_config, "--config-json", json.dumps(over), "--model", "tiny", "--variant", "pause",
                   "--model-dir", str(tiny_dir), "--shards", str(examples["pause"]), "--output", str(out),
                   check=False)
    assert proc.returncode == 1 and "pass --examples" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_examples_of_another_training_seed_are_one_line_before_training(seed1, tiny_dir, tiny_config, tmp_path):
    """A run of training seed 0 on seed 1's examples: one line, before training, nothing written. (Two seeds' adapters
    and their shared eval set are checked through Snakemake: test_workflow_retrieval.)"""
    over = {**SEEDS, "train": {**SEEDS["train"], "objective": "retrieval", "max_steps": 2, "warmup_steps": 0,
                               "grad_accum": 1, "threads": 2}}
    proc = run_cli("train", *tiny_config, "--config-json", json.dumps(over), "--model", "tiny", "--variant", "pause",
                   "--train-seed", "0", "--model-dir", str(tiny_dir), "--examples", str(seed1["pause"]), "--output",
                   str(tmp_path / "mixed"), "--no-progress", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "examples drawn for training seed 1, this run's is 0" in proc.stderr and not (tmp_path / "mixed").exists()


# ------------------------------------------------------------------------------------------------- eval bank task
def test_single_task_draws_its_needle_per_cell_from_the_eval_bank():
    from pausetune.core.data.banks import check_banks
    from pausetune.core.data.needles import build_task

    cfg = load_cfg()
    evalb = check_banks(cfg)[1]
    spec = cfg["tasks"]["bank"]
    a = build_task("bank", spec, 0, 0, 1000, 50, bank=evalb)
    assert a == build_task("bank", spec, 0, 0, 1000, 50, bank=evalb)  # seeded by the cell
    cells = {build_task("bank", spec, 0, s, n, d, bank=evalb).needles[0]
             for s in (0, 1) for n in (1000, 2000) for d in (0, 50, 100)}
    assert len(cells) >= 6 and cells <= {r["needle"] for r in evalb}
    assert a.facts == [next(r["answer"] for r in evalb if r["needle"] == a.needles[0])]
    classic = build_task("single", cfg["tasks"]["single"], 0, 0, 1000, 50)  # the fixed needle stays the default
    assert "San Francisco" in classic.needles[0] and cfg["eval"]["tasks"] == ["single"]


# ------------------------------------------------------------------------------------------------- paragraphs
def test_brackets_method_pauses_after_every_bracket_on_real_text():
    from pausetune.stages.paragraphs import split_paragraphs

    for name in ("addiction", "apple", "want", "island"):
        text = (ROOT / "tests" / "fixtures" / "essays" / f"{name}.txt").read_text()
        paras = split_paragraphs(text, "brackets")
        assert len(paras) == text.count("]") + 1 - (text.rstrip().endswith("]"))
        assert all(p.endswith("]") for p in paras[:-1]) and all("]" not in p[:-1] for p in paras)
        assert "".join(" ".join(paras).split()) == "".join(text.split())  # nothing lost, nothing added
    want = split_paragraphs((ROOT / "tests/fixtures/essays/want.txt").read_text(), "brackets")
    assert want[0].endswith("free to choose what you do? [1]") and want[2] == "Notes[1]"


def test_eval_cli_runs_bank_cells_with_their_own_facts(tiny_config, tiny_dir, pg_paragraphs, tmp_path):
    from pausetune.core.data.banks import check_banks

    evalb = {r["question"]: r for r in check_banks(load_cfg())[1]}
    over = {"eval": {"models": ["tiny"], "lengths": [600], "depths": [0, 50]}}
    run_cli("eval", *tiny_config, "--config-json", json.dumps(over), "--model", "tiny", "--variant", "baseline",
            "--tasks", "bank", "--seed", "0", "--lengths", "600", "--depths", "0", "50", "--model-dir",
            str(tiny_dir), "--haystack", str(pg_paragraphs), "--results", str(tmp_path), "--device", "cpu",
            "--threads", "1")
    cells = [json.loads(p.read_text()) for p in sorted((tmp_path / "eval").rglob("*.json"))]
    assert len(cells) == 2
    for c in cells:
        row = evalb[c["question"]]
        assert c["task"] == "bank" and row["answer"] in json.dumps(c["expected"])
        # the per-cell measures know the bank needle: its log-prob and its attention share
        assert c["answer_texts"] == [row["needle"]] and len(c["answer_token_logprobs"][0]) > 0
        assert c["needle_attention"] is not None and c["needle_attention"] > 0
    assert cells[0]["question"] != cells[1]["question"]
