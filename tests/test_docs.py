"""config/README.md is generated from the schema: the committed page must be current, and a schema edit must make
`--check` fail (on a copy of the schema: the real one is never touched)."""
from __future__ import annotations

import subprocess
import sys

import yaml

from conftest import ROOT
from pausetune.core.config import SCHEMA_PATH

SCRIPT = ROOT / "scripts" / "config_doc.py"
PAGE = ROOT / "config" / "README.md"


def config_doc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True)


def test_config_readme_is_current():
    proc = config_doc("--check")
    assert proc.returncode == 0, proc.stderr
    page = PAGE.read_text()
    # every key the schema describes is on the page, with its description
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert schema["properties"]["eval"]["properties"]["block"]["description"] in page
    assert "| `<name>.source.id` (kind: hub) | string, required |" in page


def test_a_schema_description_edit_makes_check_fail(tmp_path):
    text = SCHEMA_PATH.read_text()
    old = "description: root seed; every random choice"
    assert old in text
    copy = tmp_path / "config.schema.yaml"
    copy.write_text(text.replace(old, "description: the root seed; every random choice"))
    proc = config_doc("--check", "--schema", str(copy))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"{PAGE}: stale against {copy}: run python scripts/config_doc.py"]
    # writing to another file gives the page that schema describes; the real page stays as it was
    out = tmp_path / "README.md"
    before = PAGE.read_bytes()
    assert config_doc("--schema", str(copy), "--output", str(out)).returncode == 0
    assert "the root seed; every random choice" in out.read_text()
    assert config_doc("--check", "--schema", str(copy), "--output", str(out)).returncode == 0
    assert PAGE.read_bytes() == before
