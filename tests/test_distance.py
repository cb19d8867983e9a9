"""Distance to the question and effective length (issue #28): every cell records how far its needle sits from the
question, and the tables recover a known D50 and a known effective length from synthetic cells."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pausetune.core.report.tables import (d50_of, distance_table, effective_length_of, effective_lengths,
                                          logistic_fit)


def test_logistic_fit_recovers_known_parameters():
    x = np.linspace(0, 10, 41)
    y = 1 / (1 + np.exp(-(6 - 1.5 * x)))  # fractional recalls on the curve itself
    a, b = logistic_fit(x, y, ridge=0)
    assert a == pytest.approx(6, abs=1e-4) and b == pytest.approx(-1.5, abs=1e-4)


def test_d50_recovered_and_its_status():
    d = np.array([2 ** k - 1 for k in range(6, 15)] * 3, dtype=float)  # 63 ... 16383 tokens
    true_d50 = 2000.0
    r = 1 / (1 + np.exp(2.0 * (np.log2(1 + d) - np.log2(1 + true_d50))))
    d50, slope, status = d50_of(d, r)
    assert status == "crosses" and d50 == pytest.approx(true_d50, rel=1e-3) and slope == pytest.approx(-2.0, rel=1e-3)
    assert d50_of(d, np.ones_like(d))[2] in ("above", "flat") and math.isnan(d50_of(d, np.ones_like(d))[0])
    assert d50_of(d, np.where(d < 3000, 0.6, 0.9))[2] == "flat"  # recall rises with distance
    far = 1 / (1 + np.exp(2.0 * (np.log2(1 + d) - 20)))  # crosses beyond every measured distance
    assert d50_of(d, far)[2] == "above" and math.isnan(d50_of(d, far)[0])
    near = 1 / (1 + np.exp(2.0 * (np.log2(1 + d) - 3)))
    assert d50_of(d, near)[2] == "below"


def _cells(recall_of, runs=(0, 1, 2), lengths=(1000, 2000, 4000, 8000), depths=(0, 25, 50, 75, 100)):
    rows = []
    for r in runs:
        for n in lengths:
            for dp in depths:
                dist = int((n - 100) * (1 - dp / 100))  # depth 100: next to the question
                rows.append({"model": "m", "task": "bank", "variant": "v", "train_seed": r, "seed": 0, "length": n,
                             "depth": float(dp), "needle_distance": dist, "recall": recall_of(r, n, dp, dist),
                             "score": 1.0})
    return pd.DataFrame(rows)


def test_distance_table_bins_and_d50():
    df = _cells(lambda r, n, dp, dist: float(dist < 1500))
    t = distance_table(df, b=200, seed=0)
    bins = t[t.kind == "bin"]
    assert list(bins.bin_lo) == [0, 512, 1024, 2048, 4096] and bins.n.sum() == len(df)
    assert bins[bins.bin_lo == 0].recall_pp.iloc[0] == 100 and bins[bins.bin_lo == 2048].recall_pp.iloc[0] == 0
    row = t[t.kind == "d50"].iloc[0]
    assert row.status == "crosses" and 1024 <= row.d50 <= 2048  # the step sits between the measured distances
    assert row.d50_ci_low <= row.d50 <= row.d50_ci_high and row.runs == 3
    pd.testing.assert_frame_equal(t, distance_table(df, b=200, seed=0))


def test_effective_length_known_values():
    assert effective_length_of([1000, 2000, 4000, 8000], [0.9, 0.8, 0.4, 0.6], 0.5) == 2000  # stops at the first dip
    assert effective_length_of([1000, 2000], [0.3, 0.9], 0.5) == 0
    recall = {1000: 1.0, 2000: 0.9, 4000: 0.7, 8000: 0.2}
    df = _cells(lambda r, n, dp, dist: recall[n])
    t = effective_lengths(df, {"threshold": 0.5, "fraction": 0.85}, b=100, seed=0)
    fixed = t[t.rule == "threshold"].iloc[0]
    own = t[t.rule == "fraction"].iloc[0]
    assert fixed.effective_length == 4000 and fixed.el_ci_low == fixed.el_ci_high == 4000  # no noise
    assert own.short_recall_pp == 100 and own.threshold == pytest.approx(0.85) and own.effective_length == 2000


def test_fraction_of_no_recall_is_undefined_not_every_length():
    """No recall at the shortest length: the fixed threshold gives 0, the share of the variant's own short-context
    recall is undefined (empty in the table, said so on the page), never the longest length."""
    from pausetune.core.report.page import distance_section

    t = effective_lengths(_cells(lambda r, n, dp, dist: 0.0), None, b=50, seed=0)
    fixed = t[t.rule == "threshold"].iloc[0]
    own = t[t.rule == "fraction"].iloc[0]
    assert fixed.effective_length == 0 and own.short_recall_pp == 0
    assert pd.isna(own.effective_length) and pd.isna(own.el_ci_low) and pd.isna(own.el_ci_high)
    rows = [{k: ("" if pd.isna(v) else v) for k, v in r.items()} for r in t.to_dict("records")]
    page = "\n".join(distance_section([], rows))
    assert "| fraction | 0.00 | 0.0 | – (no recall at the shortest length) |" in page
    assert "| threshold | 0.50 | 0.0 | 0 [0, 0] |" in page


def test_effective_length_interval_widens_with_run_noise():
    rng = np.random.default_rng(0)
    shift = {0: 0.2, 1: -0.2, 2: 0.0}
    df = _cells(lambda r, n, dp, dist: float(rng.random() < min(1, max(0, {1000: .95, 2000: .8, 4000: .55,
                                                                                8000: .3}[n] + shift[r]))))
    row = effective_lengths(df, None, b=300, seed=1).query("rule == 'threshold'").iloc[0]
    assert row.el_ci_low <= row.effective_length <= row.el_ci_high and row.el_ci_low < row.el_ci_high


def _two_variants():
    near = _cells(lambda r, n, dp, dist: float(dist < 1500))
    far = _cells(lambda r, n, dp, dist: float(dist < 5000)).assign(variant="w")
    return pd.concat([near, far], ignore_index=True)


def _rows(spec: dict, mark: str) -> list[dict]:
    layer = next(l for l in spec["layer"] if (l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"]) == mark)
    return spec["datasets"][layer["data"]["name"]]


def test_distance_figure_draws_the_table():
    """The figure's points and D50 diamonds are distance.csv's rows (same resamples and seed), one line per variant."""
    from pausetune.core.report.charts import build_chart

    df = _two_variants()
    spec = build_chart(df, "distance", "m", "bank", b=100, seed=4).to_dict()
    table = distance_table(df, b=100, seed=4)
    drawn = {(r["variant"], r["bin_lo"]): r["recall_pp"] for r in _rows(spec, "line")}
    want = {(r.variant, r.bin_lo): r.recall_pp for r in table[table.kind == "bin"].itertuples()}
    assert drawn == want and {v for v, _ in drawn} == {"v", "w"}
    d50 = {r["variant"]: (r["d50"], r["d50_ci_low"], r["d50_ci_high"]) for r in _rows(spec, "point")}
    rows = table[table.kind == "d50"].set_index("variant")
    assert d50 == {v: (rows.loc[v, "d50"], rows.loc[v, "d50_ci_low"], rows.loc[v, "d50_ci_high"]) for v in "vw"}
    assert d50["v"][0] < 2048 < d50["w"][0]  # the later step crosses later
    sub = " ".join(spec["title"]["subtitle"])
    assert "B = 100, seed 4" in sub and f"v: D50 {rows.loc['v', 'd50']:,.0f}" in sub


def test_distance_figure_without_the_field_says_so():
    from pausetune.core.report.charts import build_chart

    spec = build_chart(_cells(lambda *a: 1.0).drop(columns="needle_distance"), "distance", "m", "bank").to_dict()
    assert "no cells carry needle_distance" in " ".join(spec["title"]["subtitle"])


def test_cli_distance_figure(tmp_path):
    """`pausetune figures --kind distance` as the rule calls it: the aggregate stage's seed and report.bootstrap."""
    from conftest import run_cli

    table = tmp_path / "cells.parquet"
    _two_variants().to_parquet(table, index=False)
    proc = run_cli("figures", "--cells-table", str(table), "--kind", "distance", "--model", "m", "--task", "bank",
                   "--output", str(tmp_path / "d"), "--config-json", json.dumps({"seed": 4, "report": {"bootstrap": 100}}))
    assert "figures: distance m/bank" in proc.stdout
    assert all((tmp_path / f"d.{e}").stat().st_size > 1000 for e in ("html", "png", "svg"))
    assert "B = 100, seed 4" in (tmp_path / "d.svg").read_text()


@pytest.mark.parametrize("layout", ["chat", "plain"])
def test_cells_distance_is_the_tokens_between_needle_and_question(smollm2_dir, pg_paragraphs, layout):
    """On a real prompt (SmolLM2's tokenizer, real haystack; its chat template and the plain layout): the recorded
    question start is the token where the question's text begins, and the distance counts exactly the tokens from
    the needle's last token to it."""
    from pausetune.core.config import load_config
    from pausetune.core.data.haystack import PromptBuilder, build_stream, essay_order, haystack_ids, load_essays
    from pausetune.core.models import load_tokenizer

    from conftest import DEFAULT_CONFIG

    overlay = {"models": {"smollm2": {"chat_template": layout == "chat"}}}
    config = load_config([str(DEFAULT_CONFIG)], json.dumps(overlay))
    tok = load_tokenizer(smollm2_dir)
    essays = dict(load_essays([str(pg_paragraphs)]))
    stream = build_stream(tok, essays, essay_order(haystack_ids(list(essays), config), 0), 2000, None)
    single = config["tasks"]["single"]
    b = PromptBuilder(tok, config, "smollm2")
    for depth in (0, 40, 100):
        cp = b.build(stream, 2000, depth, single["needles"], single["question"])
        q = cp.question_start
        assert tok.decode(cp.ids[q:]).lstrip().startswith(single["question"])
        assert single["question"][:8] not in tok.decode(cp.ids[:q])
        end = cp.needle_positions[0] + cp.needle_lengths[0]
        assert tok.decode(cp.ids[end - 3:end]).rstrip().endswith("day.")  # the needle's last tokens
        assert cp.needle_distances == [q - end] and len(cp.ids[end:q]) == q - end
    assert cp.needle_distances[0] < 60  # depth 100: only the template's separators lie between
