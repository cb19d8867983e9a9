"""Two runs' results/tables side by side: does a rerun give the same numbers?

The pipeline claims determinism (greedy decoding, seeded essay order and bootstrap, fp32 on CPU); this is the
check. Cells are matched by (model, variant, task, seed, length, depth) and every column must be equal, bit for
bit, except those that measure the run rather than the model: timings (`timing.*`) and where a cell file lay
(`path`). The derived tables (summary, deltas, profiles, summary.json) must be equal byte for byte: they are a
pure function of the cells. Anything else - a cell or a table only one run has, a column only one run wrote -
counts as a difference too, so "same" means same.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from ..core.io import PausetuneError, write_json

KEY = ["model", "variant", "task", "seed", "length", "depth"]
IGNORED_PREFIXES = ("timing.",)
IGNORED = {"path"}
DERIVED = ["summary.csv", "deltas.csv", "depth_profile.csv", "length_profile.csv", "summary.json"]
EXAMPLES = 3  # differing cells shown per column


def _ignored(col: str) -> bool:
    return col in IGNORED or col.startswith(IGNORED_PREFIXES)


def _read_cells(tables: Path):
    import pandas as pd

    path = tables / "cells.parquet"
    if not path.is_file():
        raise PausetuneError(f"{path}: not found (expected the cells table `pausetune aggregate` writes)")
    df = pd.read_parquet(path)
    missing = [k for k in KEY if k not in df.columns]
    if missing:
        raise PausetuneError(f"{path}: no column(s) {', '.join(missing)} (expected a cells table)")
    dup = df.duplicated(KEY)
    if dup.any():
        first = df.loc[dup, KEY].iloc[0].to_dict()
        raise PausetuneError(f"{path}: {int(dup.sum())} duplicate cell(s), e.g. {first}")
    return df.set_index(KEY).sort_index()


def _differs(a, b):
    """Elementwise inequality; two missing values are equal, a missing and a present one are not (pd.NA too)."""
    eq = (a.astype(object) == b.astype(object)).astype(object).fillna(False).astype(bool)
    return ~(eq | (a.isna() & b.isna()))


def compare_cells(a, b) -> dict:
    """a, b: cells frames indexed by KEY. Counts and examples of every difference, and what was not compared."""
    only_a = a.index.difference(b.index)
    only_b = b.index.difference(a.index)
    common = a.index.intersection(b.index)
    cols_a = {c for c in a.columns if not _ignored(c)}
    cols_b = {c for c in b.columns if not _ignored(c)}
    columns = {}
    for col in sorted(cols_a & cols_b):
        x, y = a.loc[common, col], b.loc[common, col]
        bad = _differs(x, y)
        if bad.any():
            columns[col] = {"cells": int(bad.sum()),
                            "examples": [{"cell": dict(zip(KEY, k)), "a": _plain(x[k]), "b": _plain(y[k])}
                                         for k in list(x.index[bad])[:EXAMPLES]]}
    return {
        "cells_a": len(a), "cells_b": len(b), "cells_compared": len(common),
        "only_a": [dict(zip(KEY, k)) for k in only_a], "only_b": [dict(zip(KEY, k)) for k in only_b],
        "columns_compared": len(cols_a & cols_b),
        "columns_only_a": sorted(cols_a - cols_b), "columns_only_b": sorted(cols_b - cols_a),
        "columns_ignored": sorted(c for c in set(a.columns) | set(b.columns) if _ignored(c)),
        "differing_columns": columns,
    }


def _plain(v):
    """A JSON-able scalar for the report."""
    if hasattr(v, "item"):
        v = v.item()
    return None if v is None or (isinstance(v, float) and v != v) else v


def compare_file(a: Path, b: Path) -> dict:
    """Byte equality of one derived table; the first differing lines when not."""
    if not a.is_file() or not b.is_file():
        return {"same": False, "missing": [str(p) for p in (a, b) if not p.is_file()]}
    ta, tb = a.read_bytes(), b.read_bytes()
    if ta == tb:
        return {"same": True, "bytes": len(ta)}
    diff = difflib.unified_diff(ta.decode("utf-8", "replace").splitlines(), tb.decode("utf-8", "replace").splitlines(),
                                "a/" + a.name, "b/" + b.name, n=0, lineterm="")
    lines = [d for d in diff if not d.startswith(("---", "+++", "@@"))]
    return {"same": False, "changed_lines": len(lines), "first": lines[:6]}


def compare(a_dir: str | os.PathLike, b_dir: str | os.PathLike) -> dict:
    a, b = Path(a_dir), Path(b_dir)
    for d in (a, b):
        if not d.is_dir():
            raise PausetuneError(f"{d}: not a directory (expected a results/tables folder)")
    cells = compare_cells(_read_cells(a), _read_cells(b))
    files = {name: compare_file(a / name, b / name) for name in DERIVED
             if (a / name).exists() or (b / name).exists()}
    same = (not cells["only_a"] and not cells["only_b"] and not cells["columns_only_a"]
            and not cells["columns_only_b"] and not cells["differing_columns"]
            and all(f["same"] for f in files.values()))
    return {"a": str(a), "b": str(b), "same": same, "cells": cells, "tables": files}


def report_lines(rep: dict) -> list[str]:
    c = rep["cells"]
    out = [f"cells: {c['cells_compared']} matched of {c['cells_a']} (a) / {c['cells_b']} (b), "
           f"{c['columns_compared']} columns compared, ignored: {', '.join(c['columns_ignored']) or 'none'}"]
    for side in ("a", "b"):
        if c[f"only_{side}"]:
            out.append(f"  {len(c[f'only_{side}'])} cell(s) only in {side}, e.g. {c[f'only_{side}'][0]}")
        if c[f"columns_only_{side}"]:
            out.append(f"  column(s) only in {side}: {', '.join(c[f'columns_only_{side}'])}")
    for col, d in c["differing_columns"].items():
        ex = d["examples"][0]
        out.append(f"  {col}: differs in {d['cells']} cell(s), e.g. {ex['cell']}: {ex['a']!r} vs {ex['b']!r}")
    for name, f in rep["tables"].items():
        if f["same"]:
            out.append(f"{name}: identical ({f['bytes']} bytes)")
        elif "missing" in f:
            out.append(f"{name}: missing in {', '.join(f['missing'])}")
        else:
            out.append(f"{name}: {f['changed_lines']} line(s) differ, first: {f['first'][0]}")
    out.append("same" if rep["same"] else "DIFFERENT")
    return out


# ----------------------------------------------------------------------------------------------- CLI


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="TABLES_A", help="one run's results/tables")
    parser.add_argument("b", metavar="TABLES_B", help="the other run's results/tables")
    parser.add_argument("--output", default=None, metavar="FILE", help="also write the full report as JSON")


def main(args, config: dict) -> int:
    rep = compare(args.a, args.b)
    if args.output:
        write_json(args.output, rep)
    print("\n".join(f"compare: {line}" for line in report_lines(rep)))
    return 0 if rep["same"] else 1
