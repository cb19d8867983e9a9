"""u_shape.csv (issue #27): the lost-in-the-middle U depth, edges minus middle in recall points, with an interval
over training runs, lengths and depths; recovered exactly on synthetic cells whose U is known."""
from __future__ import annotations

import random

import pandas as pd
import pytest

from pausetune.core.report.tables import depth_class, u_shape

DEPTHS = [0, 10, 25, 50, 75, 90, 100]
LENGTHS = [1000, 2000, 4000, 16000, 32000]


def frame(recall_of, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Cells of baseline (untrained) and two tuned arms; recall_of(variant, seed, length, depth) -> recall."""
    rows = []
    for variant in ("baseline", "pause-tuned", "plain-tuned"):
        for s in ([-1] if variant == "baseline" else seeds):
            for n in LENGTHS:
                for d in DEPTHS:
                    r = recall_of(variant, s, n, d)
                    rows.append({"model": "m", "task": "bank", "variant": variant, "train_seed": s, "seed": 0,
                                 "length": n, "depth": float(d), "recall": r, "score": 1 + 9 * r})
    return pd.DataFrame(rows)


def test_depth_classes():
    assert [depth_class(d) for d in DEPTHS] == ["edge", "edge", "middle", "middle", "middle", "edge", "edge"]
    assert depth_class(20) is None and depth_class(80) is None


def test_known_u_depths_and_their_difference():
    middle = {"baseline": 0.0, "pause-tuned": 0.5, "plain-tuned": 1.0}

    def recall(v, s, n, d):
        if n > 16000:  # the full window: everything lost but the end
            return 1.0 if d == 100 else 0.0
        return 1.0 if depth_class(d) == "edge" else middle[v] if depth_class(d) == "middle" else 0.7

    t = u_shape(frame(recall), {"m": 32768}, b=200, seed=0)
    row = lambda v, ref, scope: t[(t.variant == v) & (t.reference == ref) & (t.scope == scope)].iloc[0]
    half = row("baseline", "", "half_window")
    assert half["lengths"] == "1000 2000 4000 16000" and half["fill_max"] == pytest.approx(16000 / 32768)
    assert half["u_pp"] == pytest.approx(100) and half["u_ci_low"] == pytest.approx(100)
    assert half["n_edge"] == 4 * 4 and half["n_middle"] == 4 * 3 and half["runs"] == 1
    assert row("pause-tuned", "", "half_window")["u_pp"] == pytest.approx(50)
    assert row("pause-tuned", "", "half_window")["runs"] == 3
    assert row("plain-tuned", "", "half_window")["u_pp"] == pytest.approx(0)
    d = row("pause-tuned", "plain-tuned", "half_window")
    assert d["u_pp"] == pytest.approx(50) and d["u_ci_low"] == pytest.approx(50) and d["u_ci_high"] == pytest.approx(50)
    assert row("pause-tuned", "baseline", "half_window")["u_pp"] == pytest.approx(-50)
    full = row("baseline", "", "len32000")  # edges: depth 100 found, 0/10/90 not: 25 - 0
    assert full["u_pp"] == pytest.approx(25) and full["recall_middle_pp"] == pytest.approx(0)
    assert row("baseline", "", "all")["u_pp"] == pytest.approx((4 * 100 + 25) / 5)


def test_interval_covers_a_noisy_u_and_is_seeded():
    rng = random.Random(0)
    shift = {s: rng.uniform(-0.1, 0.1) for s in (0, 1, 2, 3, 4, 5)}  # run-to-run variation of the middle

    def recall(v, s, n, d):
        p = 0.9 if depth_class(d) != "middle" else 0.5 + (shift[s] if s >= 0 else 0)
        return float(rng.random() < p)

    df = frame(recall, seeds=(0, 1, 2, 3, 4, 5))
    t = u_shape(df, {"m": 32768}, b=500, seed=1)
    again = u_shape(df, {"m": 32768}, b=500, seed=1)
    pd.testing.assert_frame_equal(t, again)
    r = t[(t.variant == "pause-tuned") & (t.reference == "") & (t.scope == "all")].iloc[0]
    assert r["u_ci_low"] < r["u_pp"] < r["u_ci_high"] and r["u_ci_high"] - r["u_ci_low"] > 5
    assert r["u_ci_low"] > 0  # a 40-point U over 6 runs x 5 lengths is found


def test_grids_without_a_middle_or_an_edge_give_no_rows():
    df = frame(lambda v, s, n, d: 1.0)
    assert u_shape(df[df.depth.isin([0.0, 100.0])], {"m": 32768}, b=10).empty
    assert u_shape(df[df.depth == 50.0], {"m": 32768}, b=10).empty
