"""Config `pause`, read in one place (core.tokens: which marker, which ids) and checked against what a tuned
checkpoint was trained with (core.training.checkpoints: the markers the haystack gets must be those), one line each."""
from __future__ import annotations

import json

import pytest

from conftest import DEFAULT_CONFIG, TINY_CONFIG


def test_checkpoint_pause_settings_must_be_the_configs(tmp_path):
    from pausetune.core.training.checkpoints import check_checkpoint
    from pausetune.core.config import load_config
    from pausetune.core.io import PausetuneError

    config = load_config([str(DEFAULT_CONFIG), str(TINY_CONFIG)])
    ckpt = {}
    for variant in ("pause", "plain"):  # the manifest's keys as stage train writes them
        ckpt[variant] = tmp_path / variant
        ckpt[variant].mkdir()
        (ckpt[variant] / "manifest.json").write_text(json.dumps({"variant": variant, "pause": config["pause"]}))
    assert check_checkpoint(ckpt["pause"], "pause-tuned", config)["variant"] == "pause"
    for change in ({"mode": "text"}, {"token": "<WAIT>"}, {"mode": "reserved", "reserved_token": "<|endoftext|>"}):
        other = config | {"pause": {**config["pause"], **change}}
        with pytest.raises(PausetuneError) as e:
            check_checkpoint(ckpt["pause"], "pause-tuned", other)
        msg = str(e.value)
        assert msg.startswith(f"{ckpt['pause']}: made with pause ") and "\n" not in msg
        assert all(repr(v) in msg for v in change.values()) and "retrain it" in msg
        check_checkpoint(ckpt["plain"], "plain-tuned", other)  # no markers in a plain haystack: nothing to match
    with pytest.raises(PausetuneError) as e:
        check_checkpoint(ckpt["plain"], "pause-tuned", config)
    assert str(e.value) == f"{ckpt['plain']}: a 'plain' checkpoint, variant pause-tuned needs 'pause'"


def test_training_refuses_shards_made_with_other_pause_settings(tiny_shards, tiny_dir):
    """The same check on the training side (the same function): shards whose markers are not the config's are
    refused in one line before a model loads, whichever pause key differs."""
    from pausetune.core.config import load_config
    from pausetune.core.io import PausetuneError
    from pausetune.stages.train import check_inputs

    config = load_config([str(DEFAULT_CONFIG), str(TINY_CONFIG)])
    assert check_inputs("tiny", "pause", tiny_dir, tiny_shards["pause"], config)["pause_ids"]
    for change in ({"token": "<WAIT>"}, {"reserved_token": "<|endoftext|>"}):
        other = config | {"pause": {**config["pause"], **change}}
        with pytest.raises(PausetuneError) as e:
            check_inputs("tiny", "pause", tiny_dir, tiny_shards["pause"], other)
        msg = str(e.value)
        assert msg.startswith(f"{tiny_shards['pause'] / 'manifest.json'}: made with pause ") and "\n" not in msg
        assert all(repr(v) in msg for v in change.values()) and msg.endswith("rebuild the shards")
    check_inputs("tiny", "plain", tiny_dir, tiny_shards["plain"], config | {"pause": {**config["pause"], "token": "<WAIT>"}})


def test_each_mode_gives_its_marker_ids(smollm2_dir):
    """special: one new id past the vocabulary; text: the string's ordinary tokens; reserved: the existing token's
    id, and a token the vocabulary lacks is one line naming the key."""
    from pausetune.core.io import PausetuneError
    from pausetune.core.models import load_tokenizer
    from pausetune.core.tokens import pause_token, setup_pause

    modes = {"special": {"mode": "special", "token": "<PAUSE>"}, "text": {"mode": "text", "token": "<PAUSE>"},
             "reserved": {"mode": "reserved", "token": "<PAUSE>", "reserved_token": "<|endoftext|>"}}
    assert [pause_token(p) for p in modes.values()] == ["<PAUSE>", None, "<|endoftext|>"]
    tok = load_tokenizer(smollm2_dir)
    size = len(tok)
    assert setup_pause(tok, modes["text"]) == tok.encode(" <PAUSE>", add_special_tokens=False) and len(tok) == size
    assert len(setup_pause(tok, modes["text"])) > 1
    assert setup_pause(tok, modes["reserved"]) == [tok.convert_tokens_to_ids("<|endoftext|>")] and len(tok) == size
    assert setup_pause(tok, modes["special"]) == [size] and len(tok) == size + 1
    with pytest.raises(PausetuneError) as e:
        setup_pause(tok, {**modes["reserved"], "reserved_token": "<|nope|>"})
    assert str(e.value) == "config key 'pause.reserved_token': '<|nope|>' is not a token of this tokenizer"
