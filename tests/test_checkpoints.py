"""A tuned variant's checkpoint against the eval that reads it: the variant it was trained as, and the pause settings
it was trained with (the markers the haystack gets must be those), checked before anything loads, one line each."""
from __future__ import annotations

import json

import pytest

from conftest import DEFAULT_CONFIG, TINY_CONFIG


def test_checkpoint_pause_settings_must_be_the_configs(tmp_path):
    from pausetune.core.checkpoints import check_checkpoint
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
        assert msg.startswith(f"{ckpt['pause']}: trained with pause ") and "\n" not in msg
        assert all(repr(v) in msg for v in change.values()) and "retrain it" in msg
        check_checkpoint(ckpt["plain"], "plain-tuned", other)  # no markers in a plain haystack: nothing to match
    with pytest.raises(PausetuneError, match="a 'plain' checkpoint, variant pause-tuned needs 'pause'"):
        check_checkpoint(ckpt["plain"], "pause-tuned", config)


def test_pause_token_is_the_marker_in_the_vocabulary():
    from pausetune.core.tokens import pause_token

    assert pause_token({"mode": "special", "token": "<PAUSE>"}) == "<PAUSE>"
    assert pause_token({"mode": "reserved", "token": "<PAUSE>", "reserved_token": "<|r0|>"}) == "<|r0|>"
    assert pause_token({"mode": "text", "token": "<PAUSE>"}) is None
