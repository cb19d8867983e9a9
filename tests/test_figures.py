"""Figures from the fixture cells (see tests/test_aggregate.py for the score table), and a real Snakemake run of
the report rules (aggregate, figures, --report) in a temp project whose eval cells are the fixtures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pausetune.core.report.charts import build_chart
from pausetune.core.report.figdata import delta_data, heatmap_data, profile_data
from pausetune.core.report.tables import cells_frame, load_cells
from pausetune.core.report.targets import report_targets
from pausetune.stages.aggregate import find_cells
from pausetune.stages.figures import save_chart
from pausetune.core.io import PausetuneError

from conftest import ROOT, run_cli
from helpers import job_counts, snakemake

FIXTURE = ROOT / "tests" / "fixtures" / "cells"
M, T = "smollm2", "single"


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return cells_frame(load_cells(find_cells(FIXTURE)))


def datasets(spec: dict) -> list[list[dict]]:
    return list(spec.get("datasets", {}).values())


def layer_enc(spec: dict, channel: str) -> dict:
    return next(layer["encoding"][channel] for layer in spec["layer"] if channel in layer.get("encoding", {}))


def title_text(spec: dict) -> str:
    t = spec["title"]
    return t["text"] + " " + " ".join(t.get("subtitle", []))


# ------------------------------------------------------------------------------------------- data


def test_heatmap_data_means_over_seeds_by_hand(cells):
    d = heatmap_data(cells, M, T, "baseline").set_index(["length", "depth"])
    assert len(d) == 6 and (d["n"] == 2).all()
    assert d.loc[(1000, 0.0), "mean_score"] == 9.0      # (10 + 8) / 2
    assert d.loc[(2000, 50.0), "mean_score"] == 2.0     # (1 + 3) / 2
    assert d.loc[(2000, 100.0), "mean_score"] == 4.0
    assert "seed 0: Eat a sandwich and sit in Dolores Park on a sunny day." in d.loc[(1000, 0.0), "answers"]
    assert "seed 1:" in d.loc[(1000, 0.0), "answers"]


def test_missing_cells_are_gaps_not_zeros(cells, tmp_path):
    # plain-tuned has no len2000/depth50 cell in the fixture
    d = heatmap_data(cells, M, T, "plain-tuned")
    assert len(d) == 5
    assert d[(d.length == 2000) & (d.depth == 50)].empty
    assert (d["mean_score"] > 0).all() and d["mean_score"].notna().all()
    # drop one more (length, depth) point, both seeds, from the baseline: no row, nothing filled with 0
    gap = cells[~((cells.variant == "baseline") & (cells.length == 1000) & (cells.depth == 100))]
    spec = build_chart(gap, "heatmap", M, T, "baseline").to_dict()
    rows = [r for ds in datasets(spec) for r in ds]
    assert len(rows) == 5
    assert not [r for r in rows if r["length"] == 1000 and r["depth"] == 100]
    assert min(r["mean_score"] for r in rows) > 0
    # the axes still span the full grid, so the gap is drawn as a gap
    assert layer_enc(spec, "x")["scale"]["domain"] == ["1K", "2K"]
    assert layer_enc(spec, "y")["scale"]["domain"] == ["0%", "50%", "100%"]
    assert "1 (length, depth) point not evaluated" in title_text(spec)
    # the delta heatmap leaves out points without a matched pair
    d, matched = delta_data(gap, M, T, "pause-tuned")
    assert len(d) == 5 and len(matched) == 10


def test_delta_data_by_hand(cells):
    d, matched = delta_data(cells, M, T, "pause-tuned")
    d = d.set_index(["length", "depth"])
    # per-seed diffs pause-tuned - baseline: len1000 d0: 0, +2 -> +1; d50: +3, +1 -> +2; len2000 d100: 0, -1 -> -0.5
    assert d.loc[(1000, 0.0), "mean_diff"] == 1.0
    assert d.loc[(1000, 50.0), "mean_diff"] == 2.0
    assert d.loc[(2000, 100.0), "mean_diff"] == -0.5
    assert len(matched) == 12 and matched["diff"].sum() == 9   # 81 - 72
    vs, m2 = delta_data(cells, M, T, "pause-tuned", "plain-tuned")
    assert len(vs) == 5 and (vs["n"] == 1).all()             # plain-tuned has seed 0 only


def test_profile_data_by_hand(cells):
    by_depth = profile_data(cells, M, T, "depth").set_index(["variant", "depth"])
    assert by_depth.loc[("baseline", 50.0), "mean_score"] == 3.5 and by_depth.loc[("baseline", 50.0), "n"] == 4
    assert by_depth.loc[("plain-tuned", 50.0), "n"] == 1
    assert pd.isna(by_depth.loc[("plain-tuned", 50.0), "lo"])  # no band from one cell
    by_len = profile_data(cells, M, T, "length").set_index(["variant", "length"])
    assert by_len.loc[("baseline", 1000.0), "mean_score"] == pytest.approx(46 / 6)
    assert by_len.loc[("baseline", 1000.0), "n"] == 6
    lo, hi = by_len.loc[("baseline", 1000.0), ["lo", "hi"]]
    assert 1 <= lo < 46 / 6 < hi <= 10


# ------------------------------------------------------------------------------------------- specs


def test_heatmap_spec_fixed_scale_titles_axes(cells):
    # a variant whose scores span only part of 1..10 still gets the fixed 1..10 scale
    mid = cells[(cells.variant == "baseline") & cells.score.between(4, 8)]
    spec = build_chart(mid, "heatmap", M, T, "baseline").to_dict()
    color = layer_enc(spec, "color")
    assert color["field"] == "mean_score"
    assert color["scale"]["domain"][0] == 1 and color["scale"]["domain"][-1] == 10
    assert color["scale"]["clamp"] is True
    assert "smollm2" in spec["title"]["text"] and "single" in spec["title"]["text"]
    assert "baseline" in spec["title"]["text"]
    assert "tokens" in layer_enc(spec, "x")["axis"]["title"]
    assert "%" in layer_enc(spec, "y")["axis"]["title"]
    tips = [t["field"] for t in layer_enc(spec, "tooltip")]
    assert {"length", "depth", "mean_score", "n", "answers"} <= set(tips)
    # depth 0 at the top: the first value of the y domain is drawn at the top of an ordinal axis
    assert layer_enc(spec, "y")["scale"]["domain"][0] == "0%"


def test_delta_spec_diverging_symmetric(cells):
    spec = build_chart(cells, "delta", M, T, "pause-tuned").to_dict()
    color = layer_enc(spec, "color")
    assert color["scale"]["domain"] == [-9, 9] and color["scale"]["domainMid"] == 0
    assert "pause-tuned" in spec["title"]["text"] and "baseline" in spec["title"]["text"]
    assert "+12.5%" in title_text(spec) and "12 matched cells" in title_text(spec)


@pytest.mark.parametrize("kind", ["length", "depth"])
def test_profile_spec(cells, kind):
    spec = build_chart(cells, kind, M, T).to_dict()
    assert "smollm2" in spec["title"]["text"] and "single" in spec["title"]["text"]
    assert "all variants" in title_text(spec)
    y = layer_enc(spec, "y")
    assert y["scale"]["domain"] == [1, 10]
    x = layer_enc(spec, "x")
    assert ("tokens" if kind == "length" else "%") in x["axis"]["title"]
    color = layer_enc(spec, "color")
    assert color["scale"]["domain"] == ["baseline", "pause-prompt", "pause-tuned", "plain-tuned"]
    tips = [t["field"] for t in next(l["encoding"]["tooltip"] for l in spec["layer"] if "tooltip" in l["encoding"])]
    assert "n" in tips


def test_files_written_offline(cells, tmp_path):
    stem = tmp_path / "fig" / "heatmap"
    written = save_chart(build_chart(cells, "heatmap", M, T, "plain-tuned"), stem)
    assert [p.name for p in written] == ["heatmap.html", "heatmap.png", "heatmap.svg"]
    png = (tmp_path / "fig" / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    svg = (tmp_path / "fig" / "heatmap.svg").read_text()
    assert svg.lstrip().startswith("<svg") and svg.count("<path") >= 5 and "plain-tuned" in svg
    html = (tmp_path / "fig" / "heatmap.html").read_text()
    assert "vegaEmbed" in html and len(html) > 500_000        # the Vega JS is inlined
    assert "cdn.jsdelivr" not in html and "<script src=" not in html
    assert "seed 0: Eat a sandwich." in html                  # the answers ride along for the tooltips


def test_cli_figures_and_errors(cells, tmp_path):
    table = tmp_path / "cells.parquet"
    cells.to_parquet(table, index=False)
    out = tmp_path / "figs" / "depth"
    run_cli("figures", "--cells-table", str(table), "--kind", "depth", "--model", M, "--task", T,
            "--output", str(out) + ".png")  # an extension on the stem is dropped
    assert all((tmp_path / "figs" / f"depth.{e}").stat().st_size > 1000 for e in ("html", "png", "svg"))
    proc = run_cli("figures", "--cells-table", str(table), "--kind", "heatmap", "--model", "nope",
                   "--task", T, "--variant", "baseline", "--output", str(out), check=False)
    assert proc.returncode == 1 and "no scored cells for model=nope" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    with pytest.raises(PausetuneError, match="needs --variant"):
        build_chart(cells, "delta", M, T)
    with pytest.raises(PausetuneError, match="both baseline"):
        build_chart(cells, "delta", M, T, "baseline", "baseline")


def test_report_targets_names():
    config = {"eval": {"models": ["m"], "tasks": ["single", "multi"],
                       "variants": ["baseline", "pause-prompt", "pause-tuned", "plain-tuned"]}}
    t = report_targets(config)
    assert t[:4] == ["results/tables/cells.parquet", "results/tables/summary.csv", "results/tables/deltas.csv",
                     "results/tables/summary.json"]
    assert "results/figures/heatmap/m/single/pause-tuned.png" in t
    assert "results/figures/delta/m/multi/plain-tuned.svg" in t
    assert "results/figures/delta/m/single/pause-tuned_vs_plain-tuned.html" in t
    assert "results/figures/length/m/multi.png" in t and "results/figures/depth/m/single.svg" in t
    assert not [p for p in t if "/delta/" in p and p.rsplit("/", 1)[1].startswith("baseline")]
    assert "results/figures/logprob/m/single/baseline.png" in t
    assert "results/figures/logprob_delta/m/multi/pause-tuned_vs_plain-tuned.svg" in t
    assert "results/figures/attention_layer/m/single.png" in t and "results/figures/pause_depth/m/multi.html" in t
    # per task: 4 heatmaps + 3 deltas + 1 delta-vs + 2 profiles = 10 score figures, and with eval.measure (default
    # on) 4 log-prob maps + 3 log-prob deltas + 1 delta-vs + 3 attention profiles = 11 more; x 3 formats
    assert len(t) == 4 + 2 * 21 * 3 and len(set(t)) == len(t)
    off = report_targets({"eval": {**config["eval"], "measure": []}})
    assert len(off) == 4 + 2 * 10 * 3
    plain = report_targets({"eval": {**config["eval"], "variants": ["baseline", "plain-tuned"]}})
    assert not [p for p in plain if "pause_depth" in p] and [p for p in plain if "attention_depth" in p]
    only_base = report_targets({"eval": {"models": ["m"], "tasks": ["single"], "variants": ["baseline"]}})
    assert not [p for p in only_base if "/delta/" in p]


# ------------------------------------------------------------------------------------------- mechanism


@pytest.fixture(scope="module")
def mcells(tmp_path_factory) -> pd.DataFrame:
    from test_aggregate import measured_cells

    return cells_frame(load_cells(measured_cells(tmp_path_factory.mktemp("m"))))


def test_mechanism_figure_data_by_hand(mcells):
    """The fixture's measures (test_aggregate.measured_cells: log-prob = score - 11, needle share = score / 100)."""
    from pausetune.core.report.figdata import attention_depth_data, attention_layer_data, logprob_map_data

    d = logprob_map_data(mcells, M, T, "baseline").set_index(["length", "depth"])
    assert d.loc[(1000, 50.0), "value"] == pytest.approx(-6) and d.loc[(1000, 50.0), "n"] == 2
    dd = logprob_map_data(mcells, M, T, "pause-tuned", "baseline").set_index(["length", "depth"])
    assert dd.loc[(1000, 50.0), "value"] == pytest.approx(2) and dd.loc[(2000, 100.0), "value"] == pytest.approx(-0.5)
    assert logprob_map_data(mcells, M, T, "plain-tuned").empty  # no measures: left out, no error
    a = attention_depth_data(mcells, M, T, "needle_attention").set_index(["variant", "depth"])
    assert a.loc[("baseline", 50.0), "mean"] == pytest.approx(0.035) and a.loc[("baseline", 50.0), "n"] == 4
    p = attention_depth_data(mcells, M, T, "pause_attention", paused_only=True)
    assert set(p["variant"]) == {"pause-prompt", "pause-tuned"} and p["mean"].tolist() == pytest.approx([0.02] * 6)
    lay = attention_layer_data(mcells, M, T).set_index(["variant", "part", "layer"])
    assert lay.loc[("baseline", "needle", 1), "share"] == pytest.approx(3 * lay.loc[("baseline", "needle", 0), "share"])
    assert lay.loc[("pause-tuned", "sink", 0), "share"] == pytest.approx(0.5)


@pytest.mark.parametrize("kind, variant, reference", [
    ("logprob", "pause-tuned", "baseline"), ("logprob_delta", "pause-tuned", "plain-tuned"),
    ("logprob_delta", "pause-tuned", "baseline"), ("attention_depth", None, "baseline"),
    ("pause_depth", None, "baseline"), ("attention_layer", None, "baseline")])
def test_mechanism_specs(mcells, cells, kind, variant, reference):
    spec = build_chart(mcells, kind, M, T, variant, reference).to_dict()
    empty = build_chart(cells, kind, M, T, variant, reference).to_dict()  # fixture cells carry no measures
    if kind == "logprob_delta" and reference == "plain-tuned":
        assert "no cells carry" in title_text(spec)  # plain-tuned has no measures in mcells
    else:
        assert "no cells carry" not in title_text(spec) and datasets(spec)
    assert "no cells carry" in title_text(empty)


def test_mechanism_files_and_cli(mcells, tmp_path):
    from test_aggregate import measured_cells

    table = tmp_path / "cells.parquet"
    mcells.to_parquet(table)
    for kind, extra in (("logprob", ["--variant", "baseline"]), ("attention_layer", [])):
        out = tmp_path / kind
        run_cli("figures", "--cells-table", str(table), "--kind", kind, "--model", M, "--task", T, *extra,
                "--output", str(out))
        assert out.with_suffix(".png").stat().st_size > 1000 and out.with_suffix(".svg").exists()
    proc = run_cli("figures", "--cells-table", str(table), "--kind", "logprob", "--model", M, "--task", T,
                   "--output", str(tmp_path / "x"), check=False)
    assert proc.returncode == 1 and "needs --variant" in proc.stderr


# ------------------------------------------------------------------------------------------- real Snakemake

SNAKEFILE = """\
# Minimal workflow around the report rules: the eval cells are fixtures already in results/eval.
import glob
from snakemake.utils import validate

configfile: "config/config.yaml"

include: "workflow/rules/common.smk"


def eval_targets(config):
    return sorted(glob.glob("results/eval/**/*.json", recursive=True))


include: "workflow/rules/report.smk"

from pausetune.core.report.targets import report_targets


rule all:
    input:
        report_targets(config),
    default_target: True
"""


def make_report_project(dest: Path) -> Path:
    for name in ["workflow", "config", "envs"]:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (dest / "Snakefile").write_text(SNAKEFILE)
    shutil.copytree(FIXTURE, dest / "results" / "eval", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return dest


@pytest.mark.slow
def test_snakemake_report_rules_and_report(tmp_path):
    project = make_report_project(tmp_path / "project")
    # a single figure is its own target: only the aggregate and that one figure job
    dry = snakemake(project, "-n", "results/figures/heatmap/smollm2/single/plain-tuned.png")
    assert job_counts(dry.stdout + dry.stderr) == {"aggregate": 1, "figure_heatmap": 1}

    snakemake(project)
    config = {"eval": {"models": ["smollm2"], "tasks": ["single"]}}
    for path in report_targets(config):
        assert (project / path).stat().st_size > 0, path
    assert "41 cells" in (project / "logs/aggregate/aggregate.log").read_text()
    assert len((project / "logs/aggregate/cells.txt").read_text().split()) == 41
    metrics = json.loads((project / "results/tables/summary.json").read_text())
    assert metrics["smollm2/pause-tuned/single/pct_vs_baseline"] == 12.5

    again = snakemake(project, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    # a changed cell reruns the aggregate and every figure (all read the cells table)
    cell = project / "results/eval/smollm2/baseline/single/seed0/len1000/depth0.json"
    data = json.loads(cell.read_text())
    data["score"] = 9
    cell.write_text(json.dumps(data))
    rerun = job_counts((lambda p: p.stdout + p.stderr)(snakemake(project, "-n")))
    assert rerun == {"aggregate": 1, "figure_heatmap": 4, "figure_delta": 3, "figure_delta_vs": 1,
                     "figure_profile": 2, "figure_logprob": 4, "figure_logprob_delta": 3,
                     "figure_logprob_delta_vs": 1, "figure_mechanism": 3, "all": 1}, rerun

    snakemake(project, "--report", "results/report.html")
    html = (project / "results/report.html").read_text(errors="replace")
    assert len(html) > 100_000
    for needle in ["NIAH heatmaps", "Delta heatmaps", "Score vs length and depth", "Tables", "summary.csv",
                   "deltas.csv", "pause-tuned_vs_plain-tuned.png", "single.png", "plain-tuned.png",
                   "lost-in-the-middle", "paired bootstrap", "Answer log-prob maps",
                   "Attention on the needle and the pauses"]:
        assert needle in html, needle


@pytest.mark.slow
def test_snakemake_aggregate_grid_longer_than_a_command_line(tmp_path):
    # 1,600 cells with ~125-character paths: {input} alone is ~200 KB, over Linux's 128 KB limit for one
    # argument; the rule passes the list through a file and Snakemake runs the long command from a script.
    project = tmp_path / "project"
    for name in ["workflow", "config", "envs"]:
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (project / "Snakefile").write_text(SNAKEFILE)
    model = "a-model-with-a-rather-long-name-so-that-every-cell-path-is-long"
    n = 0
    for variant in ("baseline", "pause-tuned"):
        for length in range(1000, 41000, 1000):
            for depth in range(0, 100, 5):
                path = project / f"results/eval/{model}/{variant}/single/seed0/len{length}/depth{depth}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                score = 1 + (length // 1000 + depth // 5 + (variant == "pause-tuned")) % 10
                path.write_text(json.dumps({"model": model, "variant": variant, "task": "single", "seed": 0,
                                            "length": length, "depth": depth, "score": score}))
                n += 1
    assert n == 1600 and n * len(str(path.relative_to(project))) > 130_000
    snakemake(project, "results/tables/summary.json")
    metrics = json.loads((project / "results/tables/summary.json").read_text())
    assert metrics[f"{model}/baseline/single/n"] == 800 and metrics[f"{model}/pause-tuned/single/n_matched"] == 800
