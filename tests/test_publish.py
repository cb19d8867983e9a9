"""The results page: every number comes from results/tables, and a changed cell changes the page."""
import json
import re
import shutil
from pathlib import Path

from pausetune.aggregate import aggregate
from pausetune.publish import verdict

from conftest import DEFAULT_CONFIG, run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "cells"


def publish(tmp_path: Path, cells_dir: Path, name: str) -> str:
    tables = tmp_path / f"tables_{name}"
    aggregate(sorted(str(p) for p in cells_dir.rglob("depth*.json")), tables, b=200, seed=0)
    page = tmp_path / f"{name}.md"
    run_cli("publish", "--config", str(DEFAULT_CONFIG), "--config-json",
            json.dumps({"publish": {"figures_dir": str(tmp_path / "figs")}}),
            "--tables", str(tables), "--benchmarks", str(tmp_path / "nobench"), "--run-info", str(tmp_path / "none"),
            "--output", str(page))
    return page.read_text(), tables


def test_page_numbers_come_from_tables(tmp_path):
    text, tables = publish(tmp_path, FIXTURE, "a")
    import csv

    summary = list(csv.DictReader(open(tables / "summary.csv")))
    deltas = list(csv.DictReader(open(tables / "deltas.csv")))
    table_numbers = set()
    for r in summary + deltas:
        for v in r.values():
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue
            table_numbers |= {f"{x:.2f}", f"{x:+.1f}", f"{x:.0f}", str(v)}
    rows = [line for line in text.splitlines() if line.startswith("| smollm2")]
    assert rows, text
    for line in rows:
        for token in re.findall(r"[+-]?\d+\.\d+|\b\d+\b", line):
            assert token in table_numbers, (token, line)
    assert "+10.61%" in text and "+3.57%" in text


def test_changed_cell_changes_page(tmp_path):
    before, _ = publish(tmp_path, FIXTURE, "before")
    cells = tmp_path / "cells"
    shutil.copytree(FIXTURE, cells)
    f = next(cells.rglob("pause-tuned/single/seed0/len1000/depth50.json"))
    cell = json.loads(f.read_text())
    cell["score"], cell["recall"], cell["exact"] = (1.0, 0.0, False) if cell["score"] > 5 else (10.0, 1.0, True)
    f.write_text(json.dumps(cell))
    after, _ = publish(tmp_path, cells, "after")
    assert before != after
    row = lambda t: [l for l in t.splitlines() if l.startswith("| smollm2 | single | pause-tuned |")][0]
    assert row(before) != row(after)


def test_verdict_rules():
    base = {"mean_variant": "6", "mean_reference": "5", "n": "40"}
    assert "excludes zero" in verdict({**base, "pct": "20", "pct_ci_low": "5", "pct_ci_high": "35"}, "x")
    assert "degradation" in verdict({**base, "pct": "-20", "pct_ci_low": "-35", "pct_ci_high": "-5"}, "x")
    v = verdict({**base, "pct": "10", "pct_ci_low": "-10", "pct_ci_high": "30"}, "x")
    assert "no detectable effect" in v and "160 matched cells" in v  # (20/10)^2 * 40
