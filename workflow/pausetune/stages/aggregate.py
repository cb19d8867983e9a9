"""Stage `aggregate`: eval cells (one JSON each) -> results/tables/.

Reads the grid's cells (a damaged one is named, or left out under report.skip_bad_cells), computes every table
and writes each atomically into --out-dir: cells.parquet, summary.csv, deltas.csv, depth_profile.csv,
length_profile.csv, measures.csv, measure_deltas.csv, layer_attention.csv, seed_summary.csv, seed_deltas.csv,
variance_components.csv, summary.json (DVC metrics) and manifest.json (the code that made them). The primary
endpoint (config report.primary, else core.design.DEFAULT_PRIMARY where the cells have it) is deltas.csv's first
row, `primary` true. What each table holds and how its intervals are drawn: core/report/tables.py.
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from ..core import layout
from ..core.config import ReportConfig
from ..core.fingerprint import code_record
from ..core.evaluation.grid import eval_targets
from ..core.io import PausetuneError, write_json, write_parquet, write_text
from ..core.report.stats import DEFAULT_BOOTSTRAP
from ..core.report.tables import (cells_frame, csv_text, deltas, layer_attention, load_cells, measure_deltas,
                                  measures_table, primary_of, profile, seed_deltas, seed_summary, summarize,
                                  summary_json, u_shape, variance_table, distance_table, effective_lengths)


def find_cells(cells_dir: str | os.PathLike) -> list[str]:
    root = Path(cells_dir)
    if not root.is_dir():
        raise PausetuneError(f"--cells-dir {cells_dir}: not a folder")
    return sorted(glob.glob(str(root / "**" / "*.json"), recursive=True))


def grid_cells(paths: list[str], cells_dir: str | os.PathLike, config: dict) -> tuple[list[str], list[str]]:
    """(the cells of the config's eval grid among `paths` found under cells_dir, the others): what Snakemake hands
    aggregate as its input list (core.evaluation.grid.eval_targets), for a folder that may hold other grids' cells too."""
    want = {str(Path(p).relative_to(layout.CELLS)) for p in eval_targets(config)}
    kept, other = [], []
    for p in paths:
        (kept if str(Path(p).relative_to(cells_dir)) in want else other).append(p)
    return kept, other


def tables_manifest(df, skipped: list | None = None) -> dict:
    """What made the tables: this stage's code, and every distinct code fingerprint among the cells it read
    (and the damaged cells left out under report.skip_bad_cells, when any)."""
    def distinct(col):
        return sorted(df[col].dropna().unique().tolist()) if col in df.columns else []

    out = {"code": code_record(__name__), "cells": int(len(df)),
           "cell_code": {"generate": distinct("code.generate"), "score": distinct("code.score")}}
    if skipped:
        out["skipped_cells"] = skipped
    return out


def aggregate(paths: list[str], out_dir: str | os.PathLike, b: int = DEFAULT_BOOTSTRAP, seed: int = 0,
              skip_bad: bool = False, report: dict | None = None, max_context: dict | None = None) -> dict:
    """Read the cells, write every table into out_dir; return {name: DataFrame or dict}."""
    if b < 1:
        raise PausetuneError(f"--bootstrap {b}: expected at least 1 resample")
    skipped: list[dict] = []
    df = cells_frame(load_cells(paths, skip_bad, skipped))
    primary = primary_of(report)
    summary = summarize(df)
    delta = deltas(df, b=b, seed=seed, primary=primary)
    if (report or {}).get("primary") and not delta["primary"].any():
        p = primary
        raise PausetuneError(f"config key 'report.primary': the cells hold no {p['variant']} vs {p['reference']} "
                             f"pair on task '{p['task']}'")
    meas, mdelta, layers = measures_table(df), measure_deltas(df, b=b, seed=seed), layer_attention(df)
    per_seed, seed_sum, variance = seed_deltas(df, primary), seed_summary(df), variance_table(df, primary)
    ushape = u_shape(df, max_context, b=b, seed=seed)
    dist = distance_table(df, b=b, seed=seed)
    eff = effective_lengths(df, (report or {}).get("effective_length"), b=b, seed=seed)
    metrics = summary_json(summary, delta, meas, mdelta)
    out = Path(out_dir)
    write_parquet(out / "cells.parquet", df)
    write_text(out / "summary.csv", csv_text(summary))
    write_text(out / "deltas.csv", csv_text(delta))
    write_json(out / "summary.json", metrics)
    for axis in ("depth", "length"):
        write_text(out / f"{axis}_profile.csv", csv_text(profile(df, axis)))
    write_text(out / "measures.csv", csv_text(meas))
    write_text(out / "measure_deltas.csv", csv_text(mdelta))
    write_text(out / "layer_attention.csv", csv_text(layers))
    write_text(out / "seed_summary.csv", csv_text(seed_sum))
    write_text(out / "seed_deltas.csv", csv_text(per_seed))
    write_text(out / "variance_components.csv", csv_text(variance))
    write_text(out / "u_shape.csv", csv_text(ushape))
    write_text(out / "distance.csv", csv_text(dist))
    write_text(out / "effective_length.csv", csv_text(eff))
    write_json(out / "manifest.json", tables_manifest(df, skipped))
    return {"cells": df, "summary": summary, "deltas": delta, "metrics": metrics, "measures": meas,
            "measure_deltas": mdelta, "layer_attention": layers, "seed_summary": seed_sum, "seed_deltas": per_seed,
            "variance": variance, "u_shape": ushape, "distance": dist,
            "effective_length": eff, "skipped": skipped}


# ----------------------------------------------------------------------------------------------- CLI


def add_arguments(parser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--cells", nargs="+", metavar="FILE", help="eval cell JSON files")
    src.add_argument("--cells-dir", metavar="DIR", help="take every *.json under DIR (recursively)")
    src.add_argument("--cells-from", metavar="FILE",
                     help="a text file listing cell paths, one a line (for grids too long for a command line)")
    parser.add_argument("--grid", action="store_true",
                        help="with --cells-dir: only the cells of the config's eval grid (what dvc.yaml runs: the "
                             "folder may hold other grids' cells), naming the others in one line")
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="folder for cells.parquet, summary.csv, deltas.csv, summary.json, *_profile.csv, "
                             "measures.csv, measure_deltas.csv, layer_attention.csv")
    parser.add_argument("--bootstrap", type=int, default=None, metavar="B",
                        help=f"bootstrap resamples (default: config report.bootstrap, else {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--bootstrap-seed", type=int, default=None, metavar="SEED",
                        help="bootstrap seed (default: config seed)")


def main(args, config: dict) -> int:
    if args.grid and not args.cells_dir:
        raise PausetuneError("--grid: only with --cells-dir")
    if args.cells:
        paths = list(args.cells)
    elif args.cells_dir:
        paths = find_cells(args.cells_dir)
        if args.grid:
            paths, other = grid_cells(paths, args.cells_dir, config)
            if other:
                print(f"aggregate: left out {len(other)} cell(s) under {args.cells_dir} outside the configured grid "
                      f"(eval.models, variants, tasks, seeds, lengths, depths), e.g. {other[0]}", file=sys.stderr)
    else:
        try:
            with open(args.cells_from, encoding="utf-8") as f:
                paths = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            raise PausetuneError(f"--cells-from {args.cells_from}: file not found") from None
    report = ReportConfig.of(config)
    b = args.bootstrap if args.bootstrap is not None else report.bootstrap
    seed = args.bootstrap_seed if args.bootstrap_seed is not None else config["seed"]
    windows = {name: m.get("max_context") for name, m in (config.get("models") or {}).items()}
    res = aggregate(paths, args.out_dir, b=int(b), seed=int(seed), skip_bad=report.skip_bad_cells,
                    report=report.to_dict(), max_context=windows)
    for s in res["skipped"]:
        print(f"aggregate: left out {s['reason']} (report.skip_bad_cells)", file=sys.stderr)
    n_delta = len(res["deltas"])
    print(f"aggregate: {len(res['cells'])} cells -> {args.out_dir} "
          f"({len(res['summary'])} summary rows, {n_delta} comparisons, B={b}, seed={seed})")
    return 0