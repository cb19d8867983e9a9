"""Config validation: the schema's defaults fill in, and a wrong key or type fails with one line naming it."""
import subprocess
import sys

import pytest

from pausetune.core.config import load_config
from pausetune.core.io import PausetuneError

from conftest import DEFAULT_CONFIG, ROOT, TINY_CONFIG, run_cli


def test_default_config_is_valid_and_defaults_fill():
    config = load_config([DEFAULT_CONFIG])
    assert config["paragraphs"]["method"] == "heuristic"
    assert config["train"]["lora"]["r"] == 16 and config["train"]["lora"]["alpha"] == 16
    assert config["train"]["lr"] == pytest.approx(2e-4)
    assert config["eval"]["buffer"] == 200


@pytest.mark.parametrize("override, message", [
    ('{"paragraphs": {"mthod": "heuristic"}}', "config key 'paragraphs.mthod': unknown key"),
    ('{"paragraphs": {"min_words": "eight"}}', "config key 'paragraphs.min_words': expected integer"),
    ('{"paragraphs": {"method": "sentences:0"}}', "config key 'paragraphs.method': expected a string matching"),
    ('{"pause": {"mode": "magic"}}', "config key 'pause.mode': expected one of"),
    ('{"sources": {"x": {"kind": "ftp"}}}', "config key 'sources.x.kind': expected one of"),
    ('{"shards": {"models": ["nope"]}}', "config key 'shards.models': unknown model 'nope'"),
    ('{"pause": {"mode": "reserved"}}', "config key 'pause.reserved_token'"),
])
def test_bad_config_one_line(override, message):
    with pytest.raises(PausetuneError) as e:
        load_config([DEFAULT_CONFIG], override)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_config_error_is_one_line_no_traceback(tmp_path):
    proc = run_cli("download", "--config", str(DEFAULT_CONFIG), "--config-json", '{"seed": "x"}',
                   "--source", "paul_graham", "--output", str(tmp_path / "x.parquet"), check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == ["pausetune download: error: config key 'seed': expected integer, got \"x\""]


def test_snakemake_rejects_bad_config_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", "seed=abc"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "config error: config key 'seed': expected integer" in proc.stderr


def test_typed_views_hold_exactly_the_schema_keys_and_no_defaults_of_their_own():
    import dataclasses

    from pausetune.core.config import VIEWS, _section_schema

    for view in VIEWS:
        keys = set(_section_schema(view.PATH)["properties"])
        fields = dataclasses.fields(view)
        assert {f.name for f in fields} == keys, (view.__name__, keys ^ {f.name for f in fields})
        assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)


def test_typed_view_fills_schema_defaults_and_names_the_bad_key():
    from pausetune.core.config import TrainConfig, load_config, load_schema

    full = TrainConfig.of(load_config([str(DEFAULT_CONFIG)]))
    schema = load_schema()["properties"]["train"]["properties"]
    partial = TrainConfig.from_dict({"lr": 1e-3})
    assert partial.lr == 1e-3 and partial.warmup_steps == schema["warmup_steps"]["default"]
    assert partial.lora.r == schema["lora"]["properties"]["r"]["default"]
    assert full.to_dict()["lora"] == full.lora.to_dict()
    with pytest.raises(PausetuneError, match=r"^config key 'train\.lora\.rank': unknown key"):
        TrainConfig.from_dict({"lora": {"rank": 8}})
    with pytest.raises(PausetuneError, match=r"^config key 'train\.max_steps': expected integer"):
        TrainConfig.from_dict({"max_steps": "many"})
