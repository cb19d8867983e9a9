"""Figures from the fixture cells (see tests/test_aggregate.py for the score table), and a real Snakemake run of
the report rules (aggregate, figures, --report) in a temp project whose eval cells are the fixtures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pausetune.core.report.charts import build_chart
from pausetune.core.report.figdata import delta_data, heatmap_data, profile_data, seeds_data
from pausetune.core.report.tables import cells_frame, deltas, load_cells, seed_deltas
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
    assert {f"results/figures/seeds/m/{task}.{ext}" for task in ("single", "multi")
            for ext in ("html", "png", "svg")} <= set(t)
    assert "results/figures/distance/m/multi.png" in t
    # per task: 4 heatmaps + 3 deltas + 1 delta-vs + 2 profiles + 1 distance + 1 per-seed dot plot = 12 score
    # figures, and with eval.measure (default on) 4 log-prob maps + 3 log-prob deltas + 1 delta-vs + 3 attention
    # profiles = 11 more; x 3 formats
    assert len(t) == 4 + 2 * 23 * 3 and len(set(t)) == len(t)
    off = report_targets({"eval": {**config["eval"], "measure": []}})
    assert len(off) == 4 + 2 * 12 * 3
    plain = report_targets({"eval": {**config["eval"], "variants": ["baseline", "plain-tuned"]}})
    assert not [p for p in plain if "pause_depth" in p] and [p for p in plain if "attention_depth" in p]
    only_base = report_targets({"eval": {"models": ["m"], "tasks": ["single"], "variants": ["baseline"]}})
    assert not [p for p in only_base if "/delta/" in p]
    # the per-seed dot plot needs a contrast with a tuned arm: none among untrained variants, nor of a lone tuned one
    untrained = report_targets({"eval": {"models": ["m"], "tasks": ["single"],
                                         "variants": ["baseline", "pause-prompt"]}})
    lone = report_targets({"eval": {"models": ["m"], "tasks": ["single"], "variants": ["pause-tuned"]}})
    assert not [p for p in untrained + lone if "/seeds/" in p]
    crossed = report_targets({"eval": {"models": ["m"], "tasks": ["single"],
                                       "variants": ["pause-tuned", "pause-tuned-on-plain"]}})
    assert "results/figures/seeds/m/single.png" in crossed


def test_seed_tables_are_shared_and_the_figure_has_its_rule():
    from pausetune.core.report.targets import FIGURE_RULES, SHARED_TABLES, figure_stem

    assert {"seed_summary.csv", "seed_deltas.csv", "variance_components.csv"} <= set(SHARED_TABLES)
    rule = next(r for r in FIGURE_RULES if r.name == "figure_seeds")
    assert (rule.kind, rule.figure, rule.caption) == ("seeds", "{model}/{task}", "seeds")
    assert rule.config_keys == ("seed", "report")  # what its interval depends on
    assert (ROOT / "workflow" / "report" / "seeds.rst").read_text().strip()
    assert figure_stem("seeds", "m", "t") == "results/figures/seeds/m/t"
    wc = type("W", (), {"model": "m", "task": "t"})()
    assert rule.args(wc) == ["--kind", "seeds", "--model", "m", "--task", "t"]


# ------------------------------------------------------------------------------------------- training seeds

# the primary endpoint as the aggregate stage would declare it for this task (report.primary)
PRIMARY = {"variant": "pause-tuned", "reference": "plain-tuned", "task": T, "lengths": None}
B = 400


@pytest.fixture(scope="module")
def seeded(cells) -> pd.DataFrame:
    """The fixture cells with two training seeds: the tuned variants' cells copied as train_seed 0 (unchanged) and
    train_seed 1 (pause-tuned recall 1 everywhere, plain-tuned recall 0 everywhere), plus a crossed variant
    plain-tuned-on-paused (pause-tuned's cells, recall 0.5, both seeds). Recall of the unchanged cells (seed 0 of
    each pair: tests/fixtures/cells/make_fixture.py): pause-tuned 61.1% over its 12 cells, 73.3% over the 5 where
    plain-tuned has a cell; plain-tuned 53.3%; baseline 47.2% (12 cells), 60% over plain-tuned's 5."""
    untrained = cells[~cells["variant"].isin(["pause-tuned", "plain-tuned"])]
    parts = [untrained]
    for run in (0, 1):
        for variant in ("pause-tuned", "plain-tuned"):
            part = cells[cells["variant"] == variant].assign(train_seed=run)
            if run == 1:
                part = part.assign(recall=1.0 if variant == "pause-tuned" else 0.0)
            parts.append(part)
        parts.append(cells[cells["variant"] == "pause-tuned"].assign(train_seed=run, variant="plain-tuned-on-paused",
                                                                     recall=0.5))
    return pd.concat(parts, ignore_index=True)


def test_seeds_data_by_hand(seeded):
    dots, pooled = seeds_data(seeded, M, T, b=B, seed=0, primary=PRIMARY)
    # the contrasts with a tuned arm, in design order, the primary first; pause-prompt - baseline is untrained
    assert list(pooled["contrast"]) == [
        "pause-tuned − plain-tuned (primary)", "pause-tuned − baseline", "plain-tuned − baseline",
        "plain-tuned-on-paused − baseline", "pause-tuned − pause-prompt", "pause-tuned − plain-tuned-on-paused",
        "plain-tuned-on-paused − plain-tuned"]
    # one dot per contrast x training seed, each seed's own contrast
    assert len(dots) == 2 * len(pooled)
    assert all(seeds == [0, 1] for seeds in dots.groupby("contrast")["train_seed"].apply(list))
    d = dots.set_index(["variant", "reference", "train_seed"])["recall_diff_pp"]
    assert d[("pause-tuned", "plain-tuned", 0)] == pytest.approx(20)          # 73.3 - 53.3 on 5 cells
    assert d[("pause-tuned", "plain-tuned", 1)] == pytest.approx(100)         # 100 - 0
    assert d[("pause-tuned", "baseline", 0)] == pytest.approx(1250 / 90)      # 61.1 - 47.2 = 13.9
    assert d[("pause-tuned", "baseline", 1)] == pytest.approx(100 - 4250 / 90)  # 100 - 47.2 = 52.8
    assert d[("plain-tuned", "baseline", 0)] == pytest.approx(-20 / 3)        # 53.3 - 60
    assert d[("plain-tuned", "baseline", 1)] == pytest.approx(-60)
    assert d[("pause-tuned", "plain-tuned-on-paused", 0)] == pytest.approx(1250 / 90 + 4250 / 90 - 50)  # 61.1 - 50
    assert d[("pause-tuned", "plain-tuned-on-paused", 1)] == pytest.approx(50)
    assert d[("plain-tuned-on-paused", "plain-tuned", 1)] == pytest.approx(50)
    n = dots.set_index(["variant", "reference", "train_seed"])["n"]
    assert n[("pause-tuned", "plain-tuned", 1)] == 5 and n[("pause-tuned", "baseline", 0)] == 12
    # the same numbers as seed_deltas.csv
    per_seed = seed_deltas(seeded, PRIMARY)
    assert sorted(dots["recall_diff_pp"]) == pytest.approx(sorted(per_seed[
        per_seed["variant"].isin(["pause-tuned", "plain-tuned", "plain-tuned-on-paused"])
        | per_seed["reference"].isin(["plain-tuned", "plain-tuned-on-paused"])]["recall_diff_pp"]))
    # the pooled mean over both runs' cells, and deltas.csv's hierarchical interval to the last digit
    p = pooled.set_index(["variant", "reference"])
    assert p.loc[("pause-tuned", "plain-tuned"), "recall_diff_pp"] == pytest.approx(60)   # (5 x 20 + 5 x 100) / 10
    assert p.loc[("pause-tuned", "baseline"), "recall_diff_pp"] == pytest.approx((1250 / 90 + 100 - 4250 / 90) / 2)
    assert (p["runs"] == 2).all() and p.loc[("pause-tuned", "plain-tuned"), "points"] == 5
    assert p.loc[("pause-tuned", "plain-tuned"), "cells_per_seed"] == "5"
    table = deltas(seeded, b=B, seed=0, primary=PRIMARY).set_index(["variant", "reference"])
    for key, row in p.iterrows():
        for col in ("recall_diff_pp", "recall_diff_pp_ci_low", "recall_diff_pp_ci_high"):
            assert row[col] == table.loc[key, col], (key, col)
        assert row["recall_diff_pp_ci_low"] <= row["recall_diff_pp"] <= row["recall_diff_pp_ci_high"]
    # another bootstrap seed draws other resamples (the figure takes the aggregate stage's)
    other = seeds_data(seeded, M, T, b=B, seed=7, primary=PRIMARY)[1].set_index(["variant", "reference"])
    assert (other["recall_diff_pp_ci_low"] != p["recall_diff_pp_ci_low"]).any()


def test_seeds_data_single_seed_and_none(seeded, cells):
    one = seeded[seeded["train_seed"] != 1]
    dots, pooled = seeds_data(one, M, T, b=B, seed=0)
    assert len(dots) == len(pooled) == 7 and set(dots["train_seed"]) == {0}
    assert (pooled["runs"] == 1).all()
    # one run: the interval still spans its points and cells
    p = pooled.set_index(["variant", "reference"]).loc[("pause-tuned", "baseline")]
    assert p["recall_diff_pp_ci_low"] < p["recall_diff_pp"] < p["recall_diff_pp_ci_high"]
    spec = build_chart(one, "seeds", M, T, b=B).to_dict()
    assert "a single training seed (0): one dot per contrast" in title_text(spec)
    # no tuned contrast: the figure says so instead of failing; an unknown model still fails in one line
    untrained = cells[cells["variant"].isin(["baseline", "pause-prompt"])]
    assert seeds_data(untrained, M, T, b=B)[1].empty
    assert "no tuned contrast" in title_text(build_chart(untrained, "seeds", M, T, b=B).to_dict())
    with pytest.raises(PausetuneError, match="no scored cells for model=nope"):
        seeds_data(seeded, "nope", T, b=B)


def layer_rows(spec: dict, mark: str) -> list[dict]:
    layer = next(l for l in spec["layer"] if (l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"]) == mark)
    return spec["datasets"][layer["data"]["name"]]


def test_seeds_spec(seeded):
    spec = build_chart(seeded, "seeds", M, T, b=B, seed=0, primary=PRIMARY).to_dict()
    assert spec["title"]["text"] == f"{M} · {T}: recall difference per training seed"
    sub = title_text(spec)
    assert "2 training seeds (0, 1)" in sub and "5-12 matched cells per seed" in sub
    assert "resampling runs (training seeds), then (length, depth) points, then cells" in sub
    assert f"B = {B}, seed 0" in sub
    dots = layer_rows(spec, "circle")
    assert len(dots) == 7 * 2 and sorted({r["train_seed"] for r in dots}) == [0, 1]
    assert sorted(r["recall_diff_pp"] for r in dots if r["contrast"].startswith("pause-tuned − plain-tuned ")) == \
        pytest.approx([20, 100])
    pooled = layer_rows(spec, "point")
    assert len(pooled) == 7
    x = layer_enc(spec, "x")
    assert "percentage points" in next(l["encoding"]["x"]["axis"]["title"] for l in spec["layer"]
                                       if "axis" in l["encoding"]["x"])
    assert x["scale"]["domain"][0] == -x["scale"]["domain"][1] and x["scale"]["domain"][1] >= 100
    y = next(l["encoding"]["y"] for l in spec["layer"] if "y" in l["encoding"])
    assert y["scale"]["domain"][0] == "pause-tuned − plain-tuned (primary)" and len(y["scale"]["domain"]) == 7
    # the zero line and the pooled interval from its low to its high end
    assert [l for l in spec["layer"] if l["mark"]["type"] == "rule" and "y" not in l["encoding"]]
    ci = next(l for l in spec["layer"] if l["mark"]["type"] == "rule" and "x2" in l["encoding"])
    assert ci["encoding"]["x"]["field"] == "recall_diff_pp_ci_low" and ci["encoding"]["x2"]["field"] == \
        "recall_diff_pp_ci_high"
    colors = layer_enc(spec, "color")["scale"]
    assert colors["domain"] == ["pause-tuned", "plain-tuned", "plain-tuned-on-paused"]
    assert "#000" not in colors["range"]  # every variant, crossed ones included, has its colour


def test_cli_seeds_figure(seeded, tmp_path):
    table = tmp_path / "cells.parquet"
    seeded.to_parquet(table, index=False)
    out = tmp_path / "seeds"
    # the aggregate stage's keys (seed, report.bootstrap, report.primary) as the rule passes them
    proc = run_cli("figures", "--cells-table", str(table), "--kind", "seeds", "--model", M, "--task", T,
                   "--output", str(out),
                   "--config-json", json.dumps({"seed": 3, "report": {"bootstrap": B, "primary": PRIMARY}}))
    assert "figures: seeds smollm2/single" in proc.stdout
    assert all((tmp_path / f"seeds.{e}").stat().st_size > 1000 for e in ("html", "png", "svg"))
    svg = (tmp_path / "seeds.svg").read_text()
    assert "pause-tuned − plain-tuned (primary)" in svg and "2 training seeds" in svg
    html = (tmp_path / "seeds.html").read_text()
    spec = json.JSONDecoder().raw_decode(html, html.index('vegaEmbed("#vis", ') + len('vegaEmbed("#vis", '))[0]
    drawn = {(r["variant"], r["reference"]): (r["recall_diff_pp_ci_low"], r["recall_diff_pp_ci_high"])
             for r in layer_rows(spec, "point")}
    table_rows = deltas(seeded, b=B, seed=3, primary=PRIMARY).set_index(["variant", "reference"])
    assert len(drawn) == 7
    for key, (lo, hi) in drawn.items():  # deltas.csv's interval, drawn
        assert (lo, hi) == (table_rows.loc[key, "recall_diff_pp_ci_low"], table_rows.loc[key, "recall_diff_pp_ci_high"])
    # --bootstrap / --bootstrap-seed override the config, as for `pausetune aggregate`
    proc = run_cli("figures", "--cells-table", str(table), "--kind", "seeds", "--model", M, "--task", T,
                   "--bootstrap", "0", "--output", str(out), check=False)
    assert proc.returncode == 1 and "--bootstrap 0" in proc.stderr


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
configfile: "config/fixture.yaml"

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


# the fixture cells' variants (config/config.yaml may configure more, which these cells do not have)
FIXTURE_CONFIG = "eval:\n  variants: [baseline, pause-prompt, pause-tuned, plain-tuned]\n"


def copy_project(dest: Path) -> Path:
    for name in ["workflow", "config", "envs"]:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (dest / "config" / "fixture.yaml").write_text(FIXTURE_CONFIG)
    (dest / "Snakefile").write_text(SNAKEFILE)
    return dest


def make_report_project(dest: Path) -> Path:
    copy_project(dest)
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
                     "figure_logprob_delta_vs": 1, "figure_mechanism": 3, "figure_seeds": 1, "figure_distance": 1,
                     "all": 1}, rerun

    snakemake(project, "--report", "results/report.html")
    html = (project / "results/report.html").read_text(errors="replace")
    assert len(html) > 100_000
    for needle in ["NIAH heatmaps", "Delta heatmaps", "Score vs length and depth", "Tables", "summary.csv",
                   "deltas.csv", "pause-tuned_vs_plain-tuned.png", "single.png", "plain-tuned.png",
                   "lost-in-the-middle", "paired bootstrap", "Answer log-prob maps",
                   "Attention on the needle and the pauses", "Training runs", "Each coloured dot is one training seed",
                   "Distance to the question", "D50"]:
        assert needle in html, needle


@pytest.mark.slow
def test_snakemake_aggregate_grid_longer_than_a_command_line(tmp_path):
    # 1,600 cells with ~125-character paths: {input} alone is ~200 KB, over Linux's 128 KB limit for one
    # argument; the rule passes the list through a file and Snakemake runs the long command from a script.
    project = copy_project(tmp_path / "project")
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
