"""Summary math of `pausetune aggregate`, checked against the fixture cells worked out by hand.

Fixture (tests/fixtures/cells/, written by make_fixture.py there): model smollm2, task single, lengths 1000/2000,
depths 0/50/100, seeds 0/1. Scores (seed 0, seed 1):

                 len1000: d0     d50    d100  | len2000: d0    d50    d100
    baseline          10,8    4,6    10,8    |          6,8   1,3    4,4     sum 72, n 12, mean 6.00
    pause-prompt      10,8    3,5    10,8    |          5,7   1,1    4,4     sum 66, n 12, mean 5.50
    pause-tuned       10,10   7,7    10,8    |          7,7   4,4    4,3     sum 81, n 12, mean 6.75
    plain-tuned       10,-    5,-    9,-     |          6,-   (none) 5,-     sum 35, n  5, mean 7.00

recall follows the score: 10 -> 1, 7..9 -> 2/3, 4..6 -> 1/3, 1..3 -> 0; exact only at 10.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pausetune.core.report.tables import (cells_frame, deltas, depth_band, flatten, length_band, load_cells, matched,
                                         summarize)
from pausetune.stages.aggregate import aggregate, find_cells
from pausetune.core.design import MATCH
from pausetune.core.report.stats import holm, paired_bootstrap
from pausetune.core.io import PausetuneError

from conftest import ROOT, run_cli

FIXTURE = ROOT / "tests" / "fixtures" / "cells"


def fixture_paths() -> list[str]:
    return find_cells(FIXTURE)


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return cells_frame(load_cells(fixture_paths()))


@pytest.fixture(scope="module")
def summary(cells) -> pd.DataFrame:
    return summarize(cells)


@pytest.fixture(scope="module")
def delta(cells) -> pd.DataFrame:
    return deltas(cells, b=2000, seed=0)


def row(summary, kind, variant, band="all"):
    sel = summary[(summary["kind"] == kind) & (summary["variant"] == variant) & (summary["band"] == band)]
    assert len(sel) == 1, (kind, variant, band, sel)
    return sel.iloc[0]


def drow(delta, variant, reference="baseline"):
    sel = delta[(delta["variant"] == variant) & (delta["reference"] == reference)]
    assert len(sel) == 1, (variant, reference)
    return sel.iloc[0]


# ------------------------------------------------------------------------------------------- reading / flattening


def test_flatten_nested_and_lists():
    flat = flatten({"a": 1, "timing": {"prefill_s": 0.5, "deep": {"x": 2}}, "pos": [3, 4], "exp": [["a", "b"]],
                    "empty": {}})
    assert flat == {"a": 1, "timing.prefill_s": 0.5, "timing.deep.x": 2, "pos": "[3, 4]", "exp": '[["a", "b"]]',
                    "empty": None}


def test_cells_table_one_row_per_cell_all_fields_flat(cells):
    assert len(cells) == 12 + 12 + 12 + 5 == len(fixture_paths())
    for col in ["model", "variant", "task", "seed", "length", "depth", "context_tokens", "needle_positions",
                "depth_actual", "question", "expected", "answer", "score", "recall", "exact", "prompt_sha256",
                "versions.transformers", "timing.prefill_s", "timing.decode_s", "timing.prompt_tokens",
                "timing.new_tokens", "path"]:
        assert col in cells.columns, col
    one = cells[(cells.variant == "plain-tuned") & (cells.length == 2000) & (cells.depth == 100)].iloc[0]
    assert json.loads(one["needle_positions"]) == [1800]
    assert json.loads(one["expected"]) == [["sandwich", "Dolores Park", "sunny"]]
    assert one["score"] == 5 and one["timing.prefill_s"] == 0.5
    # sorted by the key, so the table is stable whatever order the files come in
    assert cells_frame(load_cells(reversed(fixture_paths())))["path"].tolist() == cells["path"].tolist()


def test_cells_parquet_round_trip(tmp_path, cells):
    out = aggregate(fixture_paths(), tmp_path, b=50)
    back = pd.read_parquet(tmp_path / "cells.parquet")
    assert len(back) == len(cells) and list(back.columns) == list(out["cells"].columns)
    assert back["exact"].sum() == cells["exact"].sum()


def test_duplicate_and_malformed_cells_are_refused(tmp_path):
    src = fixture_paths()[0]
    dup = tmp_path / "copy.json"
    shutil.copy(src, dup)
    with pytest.raises(PausetuneError, match="share model/variant/train_seed/task/seed/length/depth"):
        cells_frame(load_cells([src, str(dup)]))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m", "variant": "baseline"}))
    with pytest.raises(PausetuneError, match=r"lacks key\(s\) \['task', 'seed', 'length', 'depth', 'score'\]"):
        load_cells([bad])
    with pytest.raises(PausetuneError, match="no eval cells"):
        cells_frame([])


def test_fixture_files_match_the_table_in_make_fixture():
    import runpy

    table = runpy.run_path(str(FIXTURE / "make_fixture.py"))["SCORES"]
    expected = {(v, s, length, depth): score for v, grid in table.items() for (length, depth), pair in grid.items()
                for s, score in enumerate(pair) if score is not None}
    got = {(c["variant"], c["seed"], c["length"], c["depth"]): c["score"] for c in load_cells(fixture_paths())}
    assert got == expected


# ------------------------------------------------------------------------------------------- bands


def test_depth_band_edges():
    assert depth_band(0)[0] == "0-20"
    assert depth_band(19.99)[0] == "0-20"
    assert depth_band(20)[0] == "20-40"      # left-closed
    assert depth_band(50)[0] == "40-60"
    assert depth_band(80)[0] == "80-100"
    assert depth_band(100) == ("80-100", 80.0, 100.0)  # 100 lands in the last band
    with pytest.raises(PausetuneError):
        depth_band(101)


def test_length_band_octaves_from_1k():
    assert length_band(1000) == ("1K-2K", 1000.0, 2000.0)
    assert length_band(1999)[0] == "1K-2K"
    assert length_band(2000)[0] == "2K-4K"
    assert length_band(16000)[0] == "16K-32K"
    assert length_band(128000)[0] == "128K-256K"
    assert length_band(750)[0] == "500-1K"
    # the paper's doubling grid: one band per length
    assert len({length_band(1000 * 2**k)[0] for k in range(8)}) == 8


# ------------------------------------------------------------------------------------------- summary by hand


def test_overall_rows_by_hand(summary):
    b = row(summary, "overall", "baseline")
    assert b["n"] == 12
    assert b["mean_score"] == pytest.approx(72 / 12)                 # 6.0
    # recall: two 10s (1), three of 7..9 (8,8,8: 2/3), five of 4..6 (4,6,6,4,4: 1/3), two of 1..3 (0)
    assert b["mean_recall"] == pytest.approx((2 + 3 * 2 / 3 + 5 / 3) / 12)   # 17/36 = 0.4722
    assert b["exact_rate"] == pytest.approx(2 / 12)
    # deviations from 6: 4,2,-2,0,4,2,0,2,-5,-3,-2,-2 -> squares sum 90; sd = sqrt(90/11); sem = sd/sqrt(12)
    assert b["score_sem"] == pytest.approx(math.sqrt(90 / 11) / math.sqrt(12))
    t = row(summary, "overall", "pause-tuned")
    assert (t["n"], t["mean_score"]) == (12, pytest.approx(81 / 12))  # 6.75
    # three 10s, five of 7..9 (7,7,8,7,7), three of 4..6, one 3
    assert t["mean_recall"] == pytest.approx((3 + 5 * 2 / 3 + 3 / 3) / 12)  # 0.6111
    assert t["exact_rate"] == pytest.approx(3 / 12)
    p = row(summary, "overall", "plain-tuned")
    assert (p["n"], p["mean_score"]) == (5, pytest.approx(35 / 5))   # 7.0, one seed, one cell missing
    assert row(summary, "overall", "pause-prompt")["mean_score"] == pytest.approx(66 / 12)


def test_depth_bands_by_hand(summary):
    # baseline: depth 0 -> 10,8,6,8 = 32/4; depth 50 -> 4,6,1,3 = 14/4; depth 100 -> 10,8,4,4 = 26/4
    assert row(summary, "depth_band", "baseline", "0-20")[["n", "mean_score"]].tolist() == [4, 8.0]
    assert row(summary, "depth_band", "baseline", "40-60")[["n", "mean_score"]].tolist() == [4, 3.5]
    assert row(summary, "depth_band", "baseline", "80-100")[["n", "mean_score"]].tolist() == [4, 6.5]
    # pause-tuned middle: 7,7,4,4 = 22/4
    assert row(summary, "depth_band", "pause-tuned", "40-60")["mean_score"] == 5.5
    # plain-tuned middle: only len1000 seed0 = 5
    assert row(summary, "depth_band", "plain-tuned", "40-60")[["n", "mean_score"]].tolist() == [1, 5.0]
    # empty bands get no row
    assert summary[(summary.kind == "depth_band") & (summary.band == "20-40")].empty


def test_length_bands_by_hand(summary):
    # baseline len1000: 10+8+4+6+10+8 = 46 / 6; len2000: 6+8+1+3+4+4 = 26 / 6
    assert row(summary, "length_band", "baseline", "1K-2K")["mean_score"] == pytest.approx(46 / 6)
    assert row(summary, "length_band", "baseline", "2K-4K")["mean_score"] == pytest.approx(26 / 6)
    # plain-tuned len2000: 6, 5 -> n 2, mean 5.5
    assert row(summary, "length_band", "plain-tuned", "2K-4K")[["n", "mean_score"]].tolist() == [2, 5.5]
    assert (summary["n"] > 0).all()


def test_deltas_by_hand(delta):
    t = drow(delta, "pause-tuned")
    # 81/12 vs 72/12 on all 12 matched cells: (6.75 - 6) / 6 = +12.5 %
    assert (t["n"], t["mean_variant"], t["mean_reference"]) == (12, 6.75, 6.0)
    assert t["pct"] == pytest.approx(12.5) and t["diff"] == pytest.approx(0.75)
    # pause-prompt: (5.5 - 6) / 6 = -8.333 %
    assert drow(delta, "pause-prompt")["pct"] == pytest.approx(-50 / 6)
    # plain-tuned vs baseline on the 5 matched cells (seed 0, no len2000/d50): baseline 10+4+10+6+4 = 34 / 5
    p = drow(delta, "plain-tuned")
    assert (p["n"], p["n_variant"], p["n_reference"]) == (5, 5, 12)
    assert p["mean_reference"] == pytest.approx(6.8) and p["pct"] == pytest.approx((7.0 - 6.8) / 6.8 * 100)
    # pause-tuned vs plain-tuned on those 5 cells: pause-tuned seed 0 = 10+7+10+7+4 = 38 / 5 = 7.6 vs 7.0
    v = drow(delta, "pause-tuned", "plain-tuned")
    assert (v["n"], v["mean_variant"], v["mean_reference"]) == (5, pytest.approx(7.6), pytest.approx(7.0))
    assert v["pct"] == pytest.approx(0.6 / 7.0 * 100)                 # +8.571 %
    # pause-tuned vs pause-prompt: 6.75 vs 5.5
    assert drow(delta, "pause-tuned", "pause-prompt")["pct"] == pytest.approx(1.25 / 5.5 * 100)
    assert set(zip(delta.variant, delta.reference)) == {
        ("pause-prompt", "baseline"), ("pause-tuned", "baseline"), ("plain-tuned", "baseline"),
        ("pause-tuned", "plain-tuned"), ("pause-tuned", "pause-prompt")}


def test_deltas_carry_the_exact_test_and_holm(cells, delta):
    """deltas.csv's exact McNemar columns (issue #26), recounted from the fixture cells' binary `exact` outcome."""
    from pausetune.core.report.stats import holm, mcnemar_exact
    from pausetune.core.report.tables import matched

    for _, d in delta.iterrows():
        m, _, _ = matched(cells, d["model"], d["task"], d["variant"], d["reference"])
        v, r = m["exact_v"].astype(bool), m["exact_r"].astype(bool)
        assert (d["exact_wins"], d["exact_losses"]) == (int((v & ~r).sum()), int((r & ~v).sum()))
        assert d["p_exact"] == pytest.approx(mcnemar_exact(d["exact_wins"], d["exact_losses"]))
        diffs = (m["score_v"] - m["score_r"])[lambda x: x != 0]
        assert d["bootstrap_degenerate"] == (len(diffs) > 0 and ((diffs > 0).all() or (diffs < 0).all()))
        # recall in percentage points, recounted, with its paired interval around it
        assert d["recall_variant_pp"] == pytest.approx(100 * m["recall_v"].mean())
        assert d["recall_diff_pp"] == pytest.approx(100 * (m["recall_v"].mean() - m["recall_r"].mean()))
        assert d["recall_diff_pp_ci_low"] <= d["recall_diff_pp"] <= d["recall_diff_pp_ci_high"]
    assert delta["p_holm"].tolist() == pytest.approx(holm(delta["p_exact"].tolist()))
    assert (delta["p_holm"] >= delta["p_exact"]).all() and delta["exact_wins"].sum() > 0


# ------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_per_seed():
    rng = np.random.default_rng(1)
    b = rng.integers(1, 11, 40).astype(float)
    v = np.clip(b + rng.integers(-2, 4, 40), 1, 10)
    one, two = paired_bootstrap(v, b, b=500, seed=7), paired_bootstrap(v, b, b=500, seed=7)
    assert one == two
    other = paired_bootstrap(v, b, b=500, seed=8)
    assert (other["pct_ci_low"], other["pct_ci_high"]) != (one["pct_ci_low"], one["pct_ci_high"])
    assert other["pct"] == one["pct"]


def test_constant_improvement_gives_degenerate_interval():
    # +1 on every cell: the point difference is exactly 1 in every resample, whatever the baseline.
    b = np.array([1, 3, 5, 7, 9, 2, 4, 6], dtype=float)
    res = paired_bootstrap(b + 1, b, b=1000, seed=0)
    assert res["diff"] == res["diff_ci_low"] == res["diff_ci_high"] == 1.0
    # a constant baseline of 5 with +1 everywhere: +20 % in every resample
    flat = np.full(10, 5.0)
    res = paired_bootstrap(flat + 1, flat, b=1000, seed=0)
    assert res["pct"] == res["pct_ci_low"] == res["pct_ci_high"] == 20.0


def test_interval_contains_point_estimate(delta):
    for r in delta.itertuples():
        assert r.pct_ci_low <= r.pct <= r.pct_ci_high, r
        assert r.diff_ci_low <= r.diff <= r.diff_ci_high, r
        assert r.pct_ci_low < r.pct_ci_high  # the fixture's differences vary
    assert (delta["bootstrap_b"] == 2000).all()


def test_interval_does_not_depend_on_other_variants(cells, delta):
    # each comparison has its own generator: dropping pause-prompt leaves pause-tuned vs baseline as it was
    fewer = deltas(cells[cells.variant != "pause-prompt"], b=2000, seed=0)
    a, b = drow(delta, "pause-tuned"), drow(fewer, "pause-tuned")
    assert (a.pct_ci_low, a.pct_ci_high) == (b.pct_ci_low, b.pct_ci_high)
    c = drow(deltas(cells, b=2000, seed=1), "pause-tuned")
    assert (c.pct_ci_low, c.pct_ci_high) != (a.pct_ci_low, a.pct_ci_high)


# ------------------------------------------------------------------------------------------- files and CLI


def test_cli_writes_tables_and_flat_json(tmp_path):
    import pandas as pd

    from pausetune.core.design import TABLES

    out = tmp_path / "tables"
    proc = run_cli("aggregate", "--cells-dir", str(FIXTURE), "--out-dir", str(out), "--bootstrap", "300")
    assert "41 cells" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(TABLES)
    # cells made without eval.measure: the measure tables exist, with their header only
    assert pd.read_csv(out / "measures.csv").empty and pd.read_csv(out / "measure_deltas.csv").empty
    import pandas as pd

    prof = pd.read_csv(out / "depth_profile.csv")
    cells = pd.read_parquet(out / "cells.parquet")
    want = cells.groupby(["model", "task", "variant", "depth"])["score"].mean()
    got = prof.set_index(["model", "task", "variant", "depth"])["mean_score"]
    assert list(prof.columns[:2]) == ["panel", "series"] and (prof["series"] == prof["variant"]).all()
    assert got.to_dict() == pytest.approx(want.to_dict())
    assert set(pd.read_csv(out / "length_profile.csv")["length"]) == set(cells["length"])
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["kind"]) == {"overall", "depth_band", "length_band"}
    assert list(summary.columns[:8]) == ["kind", "model", "variant", "task", "band", "band_lo", "band_hi", "n"]
    d = pd.read_csv(out / "deltas.csv")
    assert (d["bootstrap_b"] == 300).all() and (d["bootstrap_seed"] == 0).all()
    metrics = json.loads((out / "summary.json").read_text())
    assert all(isinstance(v, (int, float)) or v is None for v in metrics.values())  # flat
    k = "smollm2/pause-tuned/single"
    assert metrics[f"{k}/mean_score"] == 6.75 and metrics[f"{k}/n"] == 12
    assert metrics[f"{k}/pct_vs_baseline"] == 12.5 and metrics[f"{k}/n_matched"] == 12
    assert metrics[f"{k}/pct_ci_low"] <= 12.5 <= metrics[f"{k}/pct_ci_high"]
    assert metrics[f"{k}/pct_vs_plain-tuned"] == pytest.approx(8.5714, abs=1e-4)
    assert metrics[f"{k}/n_matched_vs_plain-tuned"] == 5
    assert metrics["smollm2/baseline/single/mean_recall"] == pytest.approx(0.4722, abs=1e-4)
    assert not any(key.startswith("smollm2/baseline/single/pct") for key in metrics)

    # --cells and --cells-from give the same tables; the bootstrap seed comes from the config
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(fixture_paths()) + "\n")
    out2, out3 = tmp_path / "t2", tmp_path / "t3"
    run_cli("aggregate", "--cells-from", str(listed), "--out-dir", str(out2), "--bootstrap", "300")
    run_cli("aggregate", "--cells", *fixture_paths(), "--out-dir", str(out3), "--bootstrap", "300",
            "--config-json", '{"seed": 3}')
    assert (out2 / "summary.csv").read_text() == (out / "summary.csv").read_text()
    assert (out2 / "deltas.csv").read_text() == (out / "deltas.csv").read_text()
    assert (pd.read_csv(out3 / "deltas.csv")["bootstrap_seed"] == 3).all()


def test_cli_errors_are_one_line(tmp_path):
    proc = run_cli("aggregate", "--cells-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "no eval cells" in proc.stderr
    proc = run_cli("aggregate", "--cells", str(tmp_path / "nope.json"), "--out-dir", str(tmp_path / "o"),
                   check=False)
    assert proc.returncode == 1 and "file not found" in proc.stderr
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- measures


def measured_cells(tmp_path):
    """The fixture cells with measures derived from their scores: log-prob = score - 11, needle share = score /
    100, pause share 0.02 in paused variants, two layers (needle share 0.5x and 1.5x the mean). plain-tuned has
    none (cells made without eval.measure stay valid and are left out of the measure tables)."""
    from pausetune.core.design import PAUSED

    paths = []
    for p in fixture_paths():
        c = json.loads(open(p).read())
        if c["variant"] != "plain-tuned":
            ns = c["score"] / 100
            pause = 0.02 if PAUSED[c["variant"]] else 0.0
            c.update(answer_logprob_mean=c["score"] - 11.0, needle_attention=ns, pause_attention=pause,
                     sink_attention=0.5, needle_attention_ratio=ns * 10,
                     attention={"layers": 2, "needle": [ns / 2, 1.5 * ns], "pause": [pause, pause],
                                "sink": [0.5, 0.5], "rest": [0.5 - ns / 2 - pause, 0.5 - 1.5 * ns - pause]})
        out = tmp_path / "cells" / Path(p).relative_to(FIXTURE)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(c))
        paths.append(str(out))
    return paths


def test_measure_tables(tmp_path):
    res = aggregate(measured_cells(tmp_path), tmp_path / "tables", b=500, seed=0)
    cells, meas, md, layers = res["cells"], res["measures"], res["measure_deltas"], res["layer_attention"]
    sc = cells[cells["answer_logprob_mean"].notna()]
    overall = meas[meas["scope"] == "overall"].set_index("variant")
    assert set(overall.index) == {"baseline", "pause-prompt", "pause-tuned"}  # plain-tuned: no measures
    assert overall.loc["pause-tuned", "mean_logprob"] == pytest.approx(6.75 - 11)
    assert overall.loc["baseline", "mean_needle_attention"] == pytest.approx(0.06)
    assert overall.loc["pause-prompt", "mean_pause_attention"] == pytest.approx(0.02)
    pts = meas[(meas["scope"] == "point") & (meas["variant"] == "baseline")]
    assert len(pts) == 6 and pts["n"].sum() == 12
    band = meas[(meas["scope"] == "depth_band") & (meas["variant"] == "baseline")].set_index("band")
    assert band.loc["40-60", "mean_logprob"] == pytest.approx((4 + 6 + 1 + 3) / 4 - 11)
    # paired deltas: log-prob differences are the score differences here; the interval comes from stats.py
    row = md[(md["metric"] == "logprob") & (md["scope"] == "overall") & (md["variant"] == "pause-tuned")
             & (md["reference"] == "baseline")].iloc[0]
    assert row["n"] == 12 and row["diff"] == pytest.approx(0.75)
    v = sc[sc["variant"] == "pause-tuned"].sort_values(MATCH)["answer_logprob_mean"].to_numpy()
    r = sc[sc["variant"] == "baseline"].sort_values(MATCH)["answer_logprob_mean"].to_numpy()
    from pausetune.core.report.stats import comparison_seed

    want = paired_bootstrap(v, r, b=500, seed=comparison_seed(0, "smollm2", "single|logprob|overall|all",
                                                              "pause-tuned", "baseline"))
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((want["diff_ci_low"], want["diff_ci_high"]))
    assert not ((md["variant"] == "plain-tuned") | (md["reference"] == "plain-tuned")).any()
    pause = md[md["metric"] == "pause_attention"]
    assert set(zip(pause["variant"], pause["reference"])) == {("pause-tuned", "pause-prompt")}
    assert set(md["scope"]) == {"overall", "depth_band", "point"}
    # per layer: the mean over cells of each layer's share
    lb = layers[layers["variant"] == "baseline"].set_index("layer")
    assert list(lb.index) == [0, 1] and lb.loc[1, "needle"] == pytest.approx(3 * lb.loc[0, "needle"])
    assert lb[["needle", "pause", "sink", "rest"]].sum(axis=1).tolist() == pytest.approx([1.0, 1.0])
    m = res["metrics"]
    assert m["smollm2/pause-tuned/single/mean_logprob"] == pytest.approx(-4.25)
    assert m["smollm2/pause-tuned/single/logprob_diff_vs_baseline"] == pytest.approx(0.75)


# --------------------------------------------------------------------------- statistics over training runs (#26)
def test_mcnemar_exact_is_the_two_sided_binomial_on_discordant_pairs():
    from pausetune.core.report.stats import degenerate_bootstrap, mcnemar_exact

    # 7 pairs only the variant got, 1 only the reference: 2 * P(X <= 1), X ~ Binomial(8, 1/2) = 2 * 9/256
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256) and mcnemar_exact(1, 7) == mcnemar_exact(7, 1)
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert degenerate_bootstrap(6, 0) and degenerate_bootstrap(0, 3)
    assert not degenerate_bootstrap(0, 0) and not degenerate_bootstrap(3, 1)


def test_holm_adjusts_step_down_in_input_order():
    from pausetune.core.report.stats import holm

    got = holm([0.01, 0.04, 0.03, float("nan")])
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(got[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def _simulated_runs(rng, runs=6, points=8, cells=3, true=0.1, sd_run=0.08, sd_point=0.05, sd_cell=0.1):
    r, p, v = [], [], []
    for i in range(runs):
        run_effect = rng.normal(0, sd_run)
        for j in range(points):
            point_effect = rng.normal(0, sd_point)
            for _ in range(cells):
                r.append(i)
                p.append(j)
                v.append(true + run_effect + point_effect + rng.normal(0, sd_cell))
    return r, p, v


def test_hierarchical_bootstrap_covers_the_true_contrast_when_runs_differ():
    """Simulated contrasts with a known between-run SD: the run -> point -> cell bootstrap covers the true mean in
    about 95% of repetitions; a cell-level bootstrap (both adapters fixed) covers it about half the time and is
    much narrower."""
    import numpy as np

    from pausetune.core.report.stats import hierarchical_bootstrap, paired_bootstrap

    rng = np.random.default_rng(1)
    reps, true = 400, 0.1
    cover_h = cover_c = width_h = width_c = 0.0
    for rep in range(reps):
        r, p, v = _simulated_runs(rng, true=true)
        h = hierarchical_bootstrap(r, p, v, b=300, seed=rep)
        c = paired_bootstrap(np.asarray(v), np.zeros(len(v)), b=300, seed=rep)
        cover_h += h["ci_low"] <= true <= h["ci_high"]
        cover_c += c["diff_ci_low"] <= true <= c["diff_ci_high"]
        width_h += h["ci_high"] - h["ci_low"]
        width_c += c["diff_ci_high"] - c["diff_ci_low"]
    assert 0.88 <= cover_h / reps <= 0.99, cover_h / reps
    assert cover_c / reps < 0.75 and width_h > 2 * width_c
    one = hierarchical_bootstrap(r, p, v, b=200, seed=3)
    assert one == hierarchical_bootstrap(r, p, v, b=200, seed=3) and one["runs"] == 6 and one["n"] == 6 * 8 * 3
    assert one["mean"] == pytest.approx(float(np.mean(v)))


def test_variance_components_and_minimum_detectable_effect():
    import numpy as np

    from pausetune.core.report.stats import minimum_detectable_effect, runs_needed, variance_components

    rng = np.random.default_rng(0)
    r, p, v = _simulated_runs(rng, runs=60, points=20, cells=4, sd_run=0.1, sd_point=0.05, sd_cell=0.2)
    comp = variance_components(r, p, v)
    assert comp["runs"] == 60 and comp["points_per_run"] == 20 and comp["cells_per_point"] == 4
    assert comp["run"] == pytest.approx(0.01, rel=0.4) and comp["cell"] == pytest.approx(0.04, rel=0.1)
    assert comp["point"] == pytest.approx(0.0025, rel=0.6)
    # by hand: runs only, 4 of them: (1.96 + 0.8416) * sqrt(0.01 / 4)
    only_runs = {"run": 0.01, "point": 0.0, "cell": 0.0, "runs": 4, "points_per_run": 10, "cells_per_point": 3}
    assert minimum_detectable_effect(only_runs) == pytest.approx((1.959964 + 0.841621) * 0.05, rel=1e-5)
    assert minimum_detectable_effect(only_runs, runs=16) == pytest.approx(minimum_detectable_effect(only_runs) / 2)
    need = runs_needed(only_runs, 0.1)
    assert minimum_detectable_effect(only_runs, runs=need) <= 0.1 < minimum_detectable_effect(only_runs, runs=need - 1)


# ----------------------------------------------------------------------------------------------- training seeds


@pytest.fixture(scope="module")
def two_runs(cells) -> pd.DataFrame:
    """The fixture's tuned cells as training seed 0, and again as seed 1 with pause-tuned's recall moved: seed 1's
    pause-tuned recalls everything (1.0) at every cell, so each run's own contrast is known by hand."""
    tuned = cells[cells["variant"].isin(["pause-tuned", "plain-tuned"])]
    s0 = tuned.assign(train_seed=0)
    s1 = tuned.assign(train_seed=1)
    s1.loc[s1["variant"] == "pause-tuned", ["recall", "score"]] = [1.0, 10.0]
    s1.loc[s1["variant"] == "pause-tuned", "exact"] = True
    s1 = s1.assign(path=s1["path"] + "#1")
    untrained = cells[~cells["variant"].isin(["pause-tuned", "plain-tuned"])]
    return pd.concat([untrained, s0, s1]).sort_values(["variant", "train_seed"]).reset_index(drop=True)


def by_hand_run_contrast(df, run, variant, reference):
    """Mean recall difference (pp) of one run's matched cells, computed directly."""
    keys = ["task", "seed", "length", "depth"]
    v = df[(df["variant"] == variant) & (df["train_seed"].isin([run, -1]))].set_index(keys)["recall"]
    r = df[(df["variant"] == reference) & (df["train_seed"].isin([run, -1]))].set_index(keys)["recall"]
    both = v.index.intersection(r.index)
    return 100 * float((v[both] - r[both]).mean()), len(both)


def test_untrained_cells_get_train_seed_minus_one(cells):
    """Untrained variants' cells (train_seed null in the file) read as -1, the fixture's tuned ones as seed 0."""
    by = cells.groupby("variant")["train_seed"].agg(set).to_dict()
    assert by == {"baseline": {-1}, "pause-prompt": {-1}, "pause-tuned": {0}, "plain-tuned": {0}}
    assert list(cells.columns[:7]) == ["model", "variant", "train_seed", "task", "seed", "length", "depth"]


def test_contrasts_pair_within_a_training_seed(two_runs):
    """Two tuned arms pair cell by cell within a run; a tuned arm and the baseline pair each run's cells with the
    one baseline cell; seed_deltas holds each run's own contrast, deltas the pooled one with runs = 2 and the SD
    between the runs' contrasts."""
    from pausetune.core.report.tables import matched, seed_deltas

    m, n_v, n_r = matched(two_runs, "smollm2", "single", "pause-tuned", "plain-tuned")
    assert len(m) == 2 * 5 and set(m["run"]) == {0, 1} and (n_v, n_r) == (24, 10)
    m, _, _ = matched(two_runs, "smollm2", "single", "pause-tuned", "baseline")
    assert len(m) == 2 * 12 and set(m["run"]) == {0, 1}
    sd = seed_deltas(two_runs)
    for variant, reference in (("pause-tuned", "plain-tuned"), ("pause-tuned", "baseline")):
        rows = sd[(sd["variant"] == variant) & (sd["reference"] == reference)].set_index("train_seed")
        assert list(rows.index) == [0, 1]
        for run in (0, 1):
            want, n = by_hand_run_contrast(two_runs, run, variant, reference)
            assert rows.loc[run, "recall_diff_pp"] == pytest.approx(want) and rows.loc[run, "n"] == n
    d = deltas(two_runs, b=500, seed=0).set_index(["variant", "reference"])
    row = d.loc[("pause-tuned", "plain-tuned")]
    per_run = [by_hand_run_contrast(two_runs, r, "pause-tuned", "plain-tuned")[0] for r in (0, 1)]
    assert row["runs"] == 2 and row["sigma_runs_pp"] == pytest.approx(np.std(per_run, ddof=1))
    assert row["recall_diff_pp"] == pytest.approx(np.mean(per_run))  # equal cells per run: the mean of the runs


def test_hierarchical_interval_is_wider_than_the_cell_level_one_when_runs_differ(two_runs):
    d = deltas(two_runs, b=1000, seed=0).set_index(["variant", "reference"]).loc[("pause-tuned", "plain-tuned")]
    hier = d["recall_diff_pp_ci_high"] - d["recall_diff_pp_ci_low"]
    cell = d["recall_diff_pp_cell_ci_high"] - d["recall_diff_pp_cell_ci_low"]
    assert hier > 1.2 * cell, (hier, cell)
    assert d["recall_diff_pp_ci_low"] <= d["recall_diff_pp"] <= d["recall_diff_pp_ci_high"]


def test_primary_endpoint_comes_first_unadjusted_and_the_rest_are_holm_adjusted(two_runs):
    primary = {"variant": "pause-tuned", "reference": "plain-tuned", "task": "single", "lengths": None}
    d = deltas(two_runs, b=200, seed=0, primary=primary)
    assert d.iloc[0]["primary"] and d["primary"].sum() == 1
    assert (d.iloc[0]["variant"], d.iloc[0]["reference"]) == ("pause-tuned", "plain-tuned")
    assert d.iloc[0]["p_holm"] == d.iloc[0]["p_exact"]
    rest = d.iloc[1:]
    assert rest["p_holm"].tolist() == pytest.approx(holm(rest["p_exact"].tolist()), nan_ok=True)
    # its lengths filter: only the declared lengths enter the primary contrast
    only = deltas(two_runs, b=200, seed=0, primary={**primary, "lengths": [1000]})
    m_len = matched(two_runs, "smollm2", "single", "pause-tuned", "plain-tuned")[0]
    assert only.iloc[0]["n"] == int((m_len["length"] == 1000).sum()) < d.iloc[0]["n"]


def test_variance_components_table_and_runs_needed(two_runs, cells):
    from pausetune.core.report.tables import variance_table

    v = variance_table(two_runs).set_index(["variant", "reference"])
    row = v.loc[("pause-tuned", "plain-tuned")]
    assert row["runs"] == 2 and row["var_run_pp2"] > 0 and row["mde_pp"] > 0
    assert row["runs_for_10pp"] >= 2 and row["sigma_runs_pp"] == pytest.approx(math.sqrt(row["var_run_pp2"]))
    one = variance_table(cells).set_index(["variant", "reference"]).loc[("pause-tuned", "plain-tuned")]
    assert one["runs"] == 1 and one["var_run_pp2"] == 0  # one run: not measured, and no run count claimed
    assert pd.isna(one["runs_for_10pp"]) and pd.isna(one["runs_for_effect"])


def test_a_declared_primary_missing_from_the_cells_is_one_line(tmp_path):
    with pytest.raises(PausetuneError, match=r"^config key 'report.primary': the cells hold no pause-tuned vs "
                                             r"plain-tuned pair on task 'bank'$"):
        aggregate(fixture_paths(), tmp_path, b=100, report={"primary": {"variant": "pause-tuned",
                                                                        "reference": "plain-tuned", "task": "bank"}})
    res = aggregate(fixture_paths(), tmp_path, b=100, report={"primary": None})  # the default, absent: no primary
    assert not res["deltas"]["primary"].any()
    for name in ("seed_summary.csv", "seed_deltas.csv", "variance_components.csv"):
        assert (tmp_path / name).exists()
