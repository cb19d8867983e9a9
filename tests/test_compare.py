"""`pausetune compare`: two runs' tables, aggregated by the real CLI from the fixture cells and from edited copies."""
from __future__ import annotations

import json
import shutil

from conftest import ROOT, run_cli

FIXTURE = ROOT / "tests" / "fixtures" / "cells"
CELL = "smollm2/baseline/single/seed0/len2000/depth50.json"


def tables(tmp_path, name, edit=None):
    """Copy the fixture cells, let `edit(cells_dir)` change them, aggregate into tmp_path/name/tables."""
    cells = tmp_path / name / "cells"
    shutil.copytree(FIXTURE, cells)
    if edit:
        edit(cells)
    out = tmp_path / name / "tables"
    run_cli("aggregate", "--cells-dir", str(cells), "--out-dir", str(out), "--bootstrap", "200")
    return out


def edit_cell(cells, rel, **changes):
    path = cells / rel
    cell = json.loads(path.read_text())
    for key, value in changes.items():
        if "." in key:
            top, sub = key.split(".")
            cell[top][sub] = value
        else:
            cell[key] = value
    path.write_text(json.dumps(cell))


def compare(a, b, tmp_path):
    proc = run_cli("compare", str(a), str(b), "--output", str(tmp_path / "report.json"), check=False)
    return proc, json.loads((tmp_path / "report.json").read_text())


def test_same_cells_same_tables(tmp_path):
    a = tables(tmp_path, "a")
    b = tables(tmp_path, "b", lambda c: edit_cell(c, CELL, **{"timing.prefill_s": 99.0, "timing.decode_s": 7.0}))
    proc, rep = compare(a, b, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rep["same"] and rep["cells"]["cells_compared"] == 41, rep["cells"]
    assert "timing.prefill_s" in rep["cells"]["columns_ignored"]
    assert set(rep["tables"]) == {"summary.csv", "deltas.csv", "depth_profile.csv", "length_profile.csv",
                                  "summary.json"} and all(t["same"] for t in rep["tables"].values())
    assert proc.stdout.strip().endswith("compare: same")


def test_a_changed_answer_is_found(tmp_path):
    a = tables(tmp_path, "a")
    b = tables(tmp_path, "b", lambda c: edit_cell(c, CELL, answer="Dolores Park.", score=9, recall=1.0))
    proc, rep = compare(a, b, tmp_path)
    assert proc.returncode == 1 and proc.stdout.strip().endswith("DIFFERENT"), proc.stdout
    diff = rep["cells"]["differing_columns"]
    assert set(diff) == {"answer", "score", "recall"}, diff
    ex = diff["score"]["examples"][0]
    assert diff["score"]["cells"] == 1 and ex["cell"] == {"model": "smollm2", "variant": "baseline",
                                                          "task": "single", "seed": 0, "length": 2000,
                                                          "depth": 50.0} and (ex["a"], ex["b"]) == (1, 9), ex
    assert not rep["tables"]["summary.csv"]["same"] and not rep["tables"]["summary.json"]["same"]
    assert "score: differs in 1 cell(s)" in proc.stdout


def test_a_missing_cell_and_a_new_column_count(tmp_path):
    a = tables(tmp_path, "a")
    b = tables(tmp_path, "b", lambda c: (c / CELL).unlink())
    proc, rep = compare(a, b, tmp_path)
    assert proc.returncode == 1
    assert rep["cells"]["only_a"] == [{"model": "smollm2", "variant": "baseline", "task": "single", "seed": 0,
                                       "length": 2000, "depth": 50.0}] and not rep["cells"]["only_b"]
    c = tables(tmp_path, "c", lambda cells: edit_cell(cells, CELL, extra_field="x"))
    proc, rep = compare(a, c, tmp_path)
    assert proc.returncode == 1 and rep["cells"]["columns_only_b"] == ["extra_field"], rep["cells"]


def test_missing_table_and_bad_input(tmp_path):
    a = tables(tmp_path, "a")
    b = tables(tmp_path, "b")
    (b / "depth_profile.csv").unlink()
    proc, rep = compare(a, b, tmp_path)
    assert proc.returncode == 1 and rep["tables"]["depth_profile.csv"]["missing"] == [str(b / "depth_profile.csv")]
    proc = run_cli("compare", str(a), str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"pausetune compare: error: {tmp_path / 'nowhere'}: not a directory " \
                                  "(expected a results/tables folder)", proc.stderr
    (b / "cells.parquet").unlink()
    proc = run_cli("compare", str(a), str(b), check=False)
    assert proc.returncode == 1 and "cells.parquet: not found" in proc.stderr and "Traceback" not in proc.stderr



def test_missing_values():
    """Two missing values match; missing against present is a difference, for nullable booleans too."""
    import numpy as np
    import pandas as pd

    from pausetune.stages.compare import _differs

    a = pd.Series([True, pd.NA, pd.NA, False], dtype="boolean")
    b = pd.Series([True, pd.NA, True, True], dtype="boolean")
    assert _differs(a, b).tolist() == [False, False, True, True]
    assert _differs(pd.Series([1.0, np.nan, 2.0]), pd.Series([1.0, np.nan, np.nan])).tolist() == [False, False, True]
