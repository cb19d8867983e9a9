"""Stage `publish`: the results page (markdown) written from results/tables/, never by hand.

Every number on the page is read from the tables the `aggregate` stage wrote (summary.csv, deltas.csv), the
checkpoint manifests and Snakemake's per-job benchmark files; the "reading" paragraphs are generated from the
same numbers by fixed rules (core/report/page.py), so the page changes whenever a cell does, and says nothing the data
does not. The small tables and the figures the page links are copied beside it (publish.tables_dir, figures_dir).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..core import layout
from ..core.config import PublishConfig
from ..core.io import atomic_path, mark, read_json, write_text
from ..core.report.page import (answer_kinds_section, figure_order, figure_rel, intro, mechanism_section,
                                primary_section, read_csv, read_optional_csv, reading_section, summary_section,
                                u_section, variance_section, distance_section, transfer_section)
from ..core.report.provenance import provenance_section, stage_times
from ..core.report.targets import SHARED_TABLES, check_output_dirs, output_dirs


def render(config: dict, tables: Path, figures: list[str], checkpoints: list[str], bench_dir: Path,
           run_info: dict | None, figures_dir: Path, page: Path, shard_manifests: list[str] = ()) -> str:
    """The page, section by section; the tables and figures it links are copied beside it on the way."""
    summary = read_csv(tables / "summary.csv")
    deltas = read_csv(tables / "deltas.csv")
    L = intro(config, tables)
    wall = sum(t[2] for t in stage_times(bench_dir)) or None
    L += primary_section(deltas, read_optional_csv(tables / "seed_deltas.csv"), config, wall)
    L += provenance_section(config, run_info, bench_dir, checkpoints, shard_manifests)
    L += summary_section(summary, deltas)
    L += transfer_section(summary, deltas, config)
    L += variance_section(read_optional_csv(tables / "variance_components.csv"))
    L += u_section(read_optional_csv(tables / "u_shape.csv"))
    L += distance_section(read_optional_csv(tables / "distance.csv"), read_optional_csv(tables / "effective_length.csv"))
    L += mechanism_section(read_optional_csv(tables / "measures.csv"), read_optional_csv(tables / "measure_deltas.csv"))
    L += answer_kinds_section(tables, config)
    tables_dir = PublishConfig.of(config).tables_dir
    if tables_dir:
        copied = copy_tables(tables, Path(tables_dir))
        link = os.path.relpath(Path(tables_dir), page.parent)
        L += [f"The tables behind every number here: [{link}/]({link}/) ({', '.join(copied)}).", ""]
    if figures:
        L += ["## Figures", ""] + copy_figures(figure_order(figures, config), figures_dir, page)
    L += reading_section(summary, deltas, tables)
    return "\n".join(L).rstrip() + "\n"


def copy_tables(tables: Path, dest: Path) -> list[str]:
    """The small tables beside the page (summary, deltas, profiles, measures, manifest), so every number on it can
    be checked without rerunning; cells.parquet (large, answers included) stays in results/."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SHARED_TABLES:
        if (tables / name).exists():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(tables / name, tmp)
            copied.append(name)
    return copied


def copy_figures(figures: list[str], figures_dir: Path, page: Path) -> list[str]:
    """Each PNG beside the page under a flat name (heatmap_M_T_V.png), and the page's line showing it."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    L = []
    for f in figures:
        src, rel = Path(f), figure_rel(f)
        name = "_".join(rel.with_suffix("").parts) + ".png"
        with atomic_path(figures_dir / name) as tmp:
            shutil.copyfile(src, tmp)
        link = os.path.relpath(figures_dir / name, page.parent)
        L += [f"![{' / '.join(rel.with_suffix('').parts)}]({link})", ""]
    return L


def add_arguments(p) -> None:
    p.add_argument("--tables", default=layout.TABLES)
    p.add_argument("--figures", nargs="*", default=[], help="PNG files to copy next to the page and show")
    p.add_argument("--checkpoints", nargs="*", default=[], help="checkpoint manifest.json files")
    p.add_argument("--shards", nargs="*", default=[], help="shard manifest.json files (which essays trained)")
    p.add_argument("--benchmarks", default="benchmarks", help="folder of Snakemake benchmark files")
    p.add_argument("--run-info", default=layout.RUN_INFO)
    p.add_argument("--output", default=None, help="the page (default: config publish.page)")


def main(args, config: dict) -> int:
    page = Path(args.output or config["publish"]["page"])
    # a killed run's temp files beside the page and in its figure and table folders (only a dead writer's)
    check_output_dirs(config)  # nothing written into a folder publish would not replace
    run_info = read_json(args.run_info) if Path(args.run_info).exists() else None
    text = render(config, Path(args.tables), args.figures, args.checkpoints, Path(args.benchmarks), run_info,
                  Path(config["publish"]["figures_dir"]), page, args.shards)
    for folder in output_dirs(config).values():  # declared outputs, even if empty; publish's from now on
        mark(folder)
    write_text(page, text)
    print(f"publish: {page}")
    return 0