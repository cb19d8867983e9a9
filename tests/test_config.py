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
    ('{"tasks": {"x": {"kind": "single", "bank": "nonsense"}}}',
     'config key \'tasks.x.bank\': expected one of [true, false, "eval", "eval_ood", "associations"], got "nonsense"'),
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

    from pausetune.core.config import VIEWS, _section_validator

    for view in VIEWS:
        keys = set(_section_validator(view.PATH).schema["properties"])
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


def _schema_defaults() -> dict[str, list]:
    """key -> the defaults the schema gives it anywhere (a key name may live in several sections)."""
    from pausetune.core.config import load_schema

    out: dict[str, list] = {}

    def walk(node):
        if isinstance(node, dict):
            for key, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and "default" in sub:
                    out.setdefault(key, []).append(sub["default"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(load_schema())
    return out


def test_no_code_default_shadows_the_schema():
    """The schema is the one home of defaults: no `.get("key", value)` in the package or the rules gives a key the
    schema defaults a value of its own (such copies drift: eval's batch_size fallback was 1 against the schema's 4).
    Reads of manifests and cells navigate with empty containers or None; those stay allowed."""
    import ast
    import re

    defaults = _schema_defaults()
    assert {"batch_size", "value_digits", "num_hops", "member_glob", "bootstrap"} <= set(defaults)
    offenders = []
    for path in sorted((ROOT / "workflow" / "pausetune").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in defaults):
                continue
            if "environ" in ast.unparse(node.func.value):
                continue
            d = node.args[1]
            harmless = (isinstance(d, ast.Constant) and d.value is None) or \
                (isinstance(d, (ast.Dict, ast.List, ast.Tuple)) and not getattr(d, "keys", None)
                 and not getattr(d, "elts", None)) or isinstance(d, ast.Subscript)
            if not harmless:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    pattern = re.compile(r"\.get\(\s*[\"'](\w+)[\"']\s*,\s*(?!None\s*\))([^)]+)\)")
    for path in sorted((ROOT / "workflow").rglob("*.smk")) + [ROOT / "Snakefile"]:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in pattern.finditer(line):
                if m.group(1) in defaults and m.group(2).strip() not in ("{}", "[]"):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {m.group(0)}")
    assert not offenders, "\n".join(offenders)


def test_kind_defaults_fill_from_the_schema():
    """Defaults that depend on a kind (RULER value digits, variable-tracking hops) live in the schema's per-kind
    branches, and the code reads them filled."""
    from pausetune.core.config import filled, source_spec, task_spec
    from pausetune.core.data.needles import build_task

    vt = task_spec("vt", {"kind": "variable_tracking", "question": "Which variables hold {value}?"})
    assert (vt["num_hops"], vt["num_chains"], vt["value_digits"]) == (4, 1, 5)
    mk = task_spec("mk", {"kind": "multikey", "template": "{key} is {value}.", "question": "{key}?", "num_keys": 3,
                          "key_words": ["red", "blue", "green"]})
    assert mk["value_digits"] == 7
    inst = build_task("vt", {"kind": "variable_tracking", "question": "Which hold {value}?"}, 0, 0, 1000, 50)
    assert len(inst.needles) == 5 and len(inst.facts) == 5 and all(len(v) == 5 for v in inst.keys["chains"])
    config = load_config([str(DEFAULT_CONFIG)])
    assert source_spec(config, "paul_graham")["member_glob"].endswith("*.txt")
    with pytest.raises(PausetuneError, match=r"^config key 'tasks\.vt\.num_hops': expected integer"):
        task_spec("vt", {"kind": "variable_tracking", "question": "{value}", "num_hops": "four"})
    assert filled(("$defs", "depths"), {"num": 3}) == {"num": 3, "min": 0, "max": 100, "spacing": "linear"}
