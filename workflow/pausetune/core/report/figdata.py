"""What each figure draws, as a table: per (length, depth) or per variant, the means over seeds the charts show.

One function per figure family (core.report.charts draws each); a cell without the measure a mechanism figure reads is
left out, not an error (cells made with eval.measure off are valid).
"""
from __future__ import annotations

import json
import math

from ..design import COMPARISONS, PAUSED, TUNED, fmt_tokens
from ..io import PausetuneError

# measured cell field per mechanism figure
MEASURE_FIELD = {"logprob": "answer_logprob_mean", "logprob_delta": "answer_logprob_mean",
                 "attention_depth": "needle_attention", "pause_depth": "pause_attention"}
LAYER_PARTS = ("needle", "pause", "sink")
ANSWER_CHARS = 140  # of each answer in a tooltip


def select(df, model: str, task: str, variant: str | None = None, table: str = "cells table"):
    sel = df[(df["model"] == model) & (df["task"] == task) & df["score"].notna()]
    if variant is not None:
        sel = sel[sel["variant"] == variant]
    if sel.empty:
        what = f"model={model} task={task}" + (f" variant={variant}" if variant else "")
        have = sorted({f"{m}/{t}/{v}" for m, t, v in df[["model", "task", "variant"]].itertuples(index=False)})
        raise PausetuneError(f"{table}: no scored cells for {what}; it has {have}")
    return sel


def _labels(values, fmt) -> dict:
    """value -> unique label; fall back to exact numbers when rounding would merge two values."""
    vals = sorted(set(values))
    labels = {v: fmt(v) for v in vals}
    if len(set(labels.values())) < len(vals):
        labels = {v: f"{v:g}" for v in vals}
    return labels


def length_labels(lengths) -> dict:
    return _labels([int(x) for x in lengths], fmt_tokens)


def depth_labels(depths) -> dict:
    return _labels([float(x) for x in depths], lambda d: f"{d:.3g}%")


def _answers(g) -> str:
    if "answer" not in g:
        return ""
    parts = []
    for seed, ans in zip(g["seed"], g["answer"]):
        text = " ".join(str(ans).split())
        if len(text) > ANSWER_CHARS:
            text = text[: ANSWER_CHARS - 1] + "…"
        parts.append(f"seed {seed}: {text}")
    return " | ".join(parts)


def heatmap_data(df, model: str, task: str, variant: str):
    """One row per evaluated (length, depth): mean score over seeds, n, answers. Missing cells: no row."""
    import pandas as pd

    sel = select(df, model, task, variant).sort_values(["length", "depth", "seed"])
    rows = []
    for (length, depth), g in sel.groupby(["length", "depth"], sort=True):
        rows.append({"length": int(length), "depth": float(depth), "mean_score": float(g["score"].mean()),
                     "n": int(len(g)), "seeds": ", ".join(str(s) for s in g["seed"]),
                     "mean_recall": float(g["recall"].mean()) if "recall" in g else math.nan,
                     "answers": _answers(g)})
    return pd.DataFrame(rows)


def delta_data(df, model: str, task: str, variant: str, reference: str = "baseline"):
    """One row per (length, depth) with matched cells: mean over seeds of score(variant) - score(reference)."""
    import pandas as pd

    a = select(df, model, task, variant)
    r = select(df, model, task, reference)
    cols = ["seed", "length", "depth", "score"] + (["answer"] if "answer" in df else [])
    m = a[cols].merge(r[cols], on=["seed", "length", "depth"], suffixes=("_v", "_r"))
    if m.empty:
        raise PausetuneError(f"no matched cells for {model}/{task}: {variant} vs {reference}")
    m["diff"] = m["score_v"] - m["score_r"]
    rows = []
    for (length, depth), g in m.sort_values(["length", "depth", "seed"]).groupby(["length", "depth"], sort=True):
        row = {"length": int(length), "depth": float(depth), "mean_diff": float(g["diff"].mean()),
               "mean_variant": float(g["score_v"].mean()), "mean_reference": float(g["score_r"].mean()),
               "n": int(len(g)), "seeds": ", ".join(str(s) for s in g["seed"])}
        if "answer_v" in g:
            row["answers_variant"] = _answers(g.rename(columns={"answer_v": "answer"}))
            row["answers_reference"] = _answers(g.rename(columns={"answer_r": "answer"}))
        rows.append(row)
    return pd.DataFrame(rows), m


def profile_data(df, model: str, task: str, by: str):
    """Per variant x `by` (length | depth): mean score over all other axes, n, standard error, 95% band."""
    import numpy as np
    import pandas as pd

    sel = select(df, model, task)
    rows = []
    for (variant, x), g in sel.groupby(["variant", by], sort=True):
        s = g["score"]
        n = len(s)
        sem = float(s.std(ddof=1) / np.sqrt(n)) if n > 1 else math.nan
        mean = float(s.mean())
        lo, hi = (max(1.0, mean - 1.96 * sem), min(10.0, mean + 1.96 * sem)) if n > 1 else (math.nan, math.nan)
        rows.append({"variant": variant, by: float(x), "mean_score": mean, "n": n, "sem": sem, "lo": lo, "hi": hi,
                     "seeds": int(g["seed"].nunique())})
    out = pd.DataFrame(rows)
    return out


def measured(df, model: str, task: str, col: str, variant: str | None = None):
    """Cells of model x task (x variant) that carry the measure `col` (none is no error: the chart then says so)."""
    sel = select(df, model, task, variant)
    if col not in sel:
        return sel.iloc[0:0].assign(**{col: math.nan})
    return sel[sel[col].notna()]


def logprob_map_data(df, model: str, task: str, variant: str, reference: str | None = None):
    """Per (length, depth): mean answer log-prob over seeds (or, with a reference, the mean paired difference)."""
    import pandas as pd

    col = MEASURE_FIELD["logprob"]
    a = measured(df, model, task, col, variant)
    if reference is None:
        rows = [{"length": int(n), "depth": float(d), "value": float(g[col].mean()), "n": int(len(g)),
                 "seeds": ", ".join(str(x) for x in g["seed"])}
                for (n, d), g in a.sort_values(["length", "depth", "seed"]).groupby(["length", "depth"], sort=True)]
        return pd.DataFrame(rows, columns=["length", "depth", "value", "n", "seeds"])
    r = measured(df, model, task, col, reference)
    m = a[["seed", "length", "depth", col]].merge(r[["seed", "length", "depth", col]], on=["seed", "length", "depth"],
                                                  suffixes=("_v", "_r"))
    m["diff"] = m[f"{col}_v"] - m[f"{col}_r"]
    rows = [{"length": int(n), "depth": float(d), "value": float(g["diff"].mean()), "n": int(len(g)),
             "mean_variant": float(g[f"{col}_v"].mean()), "mean_reference": float(g[f"{col}_r"].mean()),
             "seeds": ", ".join(str(x) for x in g["seed"])}
            for (n, d), g in m.sort_values(["length", "depth", "seed"]).groupby(["length", "depth"], sort=True)]
    return pd.DataFrame(rows, columns=["length", "depth", "value", "n", "mean_variant", "mean_reference", "seeds"])


def attention_depth_data(df, model: str, task: str, col: str, paused_only: bool = False):
    """Per variant x depth: mean of the measure `col` over lengths and seeds, n, 95% band (mean +- 1.96 SE)."""
    import numpy as np
    import pandas as pd

    sel = measured(df, model, task, col)
    if paused_only:
        sel = sel[sel["variant"].isin([v for v, on in PAUSED.items() if on])]
    rows = []
    for (variant, d), g in sel.groupby(["variant", "depth"], sort=True):
        v = g[col].astype(float)
        n = len(v)
        sem = float(v.std(ddof=1) / np.sqrt(n)) if n > 1 else math.nan
        mean = float(v.mean())
        rows.append({"variant": variant, "depth": float(d), "mean": mean, "n": n, "sem": sem,
                     "lo": mean - 1.96 * sem if n > 1 else math.nan, "hi": mean + 1.96 * sem if n > 1 else math.nan})
    return pd.DataFrame(rows, columns=["variant", "depth", "mean", "n", "sem", "lo", "hi"])


def attention_layer_data(df, model: str, task: str):
    """Per variant x layer x part (needle, pause, sink): mean share over the cells (layers from the per-layer lists)."""
    import numpy as np
    import pandas as pd

    rows = []
    cols = [f"attention.{p}" for p in LAYER_PARTS]
    sel = measured(df, model, task, cols[0]) if all(c in df for c in cols) else df.iloc[0:0]
    for variant, g in sel.groupby("variant", sort=True):
        for part, col in zip(LAYER_PARTS, cols):
            lists = [json.loads(x) if isinstance(x, str) else x for x in g[col]]
            if len({len(x) for x in lists}) != 1:
                raise PausetuneError(f"cells of {model}/{variant}/{task}: attention lists of different lengths")
            arr = np.asarray(lists, dtype=float)
            for layer, v in enumerate(arr.mean(axis=0)):
                rows.append({"variant": variant, "part": part, "layer": layer, "share": float(v), "n": len(g)})
    return pd.DataFrame(rows, columns=["variant", "part", "layer", "share", "n"])


SEED_DOT_COLUMNS = ["contrast", "variant", "reference", "primary", "train_seed", "n", "recall_variant_pp",
                    "recall_reference_pp", "recall_diff_pp", "exact_wins", "exact_losses", "p_exact"]
SEED_POOLED_COLUMNS = ["contrast", "variant", "reference", "primary", "n", "runs", "points", "cells_per_seed",
                       "recall_variant_pp", "recall_reference_pp", "recall_diff_pp", "recall_diff_pp_ci_low",
                       "recall_diff_pp_ci_high", "recall_diff_pp_cell_ci_low", "recall_diff_pp_cell_ci_high",
                       "sigma_runs_pp", "bootstrap_b", "bootstrap_seed"]


def tuned_contrasts() -> list[tuple[str, str]]:
    """The comparisons of core.design.COMPARISONS with a tuned arm (those that vary with the training seed)."""
    return [(v, r) for v, r in COMPARISONS if v in TUNED or r in TUNED]


def seeds_data(df, model: str, task: str, b: int, seed: int = 0, primary: dict | None = None):
    """The per-seed dot plot of one model x task: for every tuned contrast whose cells exist, (dots) one row per
    training seed with that seed's own recall difference (tables.seed_deltas), and (pooled) one row with the pooled
    difference and its hierarchical 95% interval (tables.recall_points: resamples runs, then (length, depth) points,
    then cells), seeded as deltas.csv seeds it (stats.comparison_seed with the bootstrap seed), so with the same
    `b`, `seed` and `primary` (the aggregate stage's) the interval is deltas.csv's recall_diff_pp_ci_low/high.
    Contrasts in design order, the primary endpoint first; a contrast without matched cells carrying recall is
    left out (none left: both frames empty, and the chart says so)."""
    import pandas as pd

    from .stats import comparison_seed
    from .tables import contrasts, recall_points, seed_deltas

    sel = select(df, model, task)
    wanted = tuned_contrasts()
    per_seed = seed_deltas(sel, primary)
    dots, pooled = [], []
    for (_, _, variant, reference), m, _, _, prim in contrasts(sel, primary):
        if (variant, reference) not in wanted or "recall_v" not in m or m.empty:
            continue
        # the matched frame deltas() hands recall_points, with its seed: the same numbers as deltas.csv
        pts = recall_points(m, b, comparison_seed(seed, model, task, variant, reference))
        if math.isnan(pts["recall_diff_pp"]):
            continue
        label = f"{variant} − {reference}" + (" (primary)" if prim else "")
        counts = m.groupby("run").size()
        pooled.append({"contrast": label, "variant": variant, "reference": reference, "primary": bool(prim),
                       "n": int(len(m)), "runs": int(pts["runs"]), "points": int(pts["points"]),
                       "cells_per_seed": f"{counts.min()}" if counts.min() == counts.max()
                       else f"{counts.min()}-{counts.max()}",
                       **{k: pts[k] for k in ("recall_variant_pp", "recall_reference_pp", "recall_diff_pp",
                                              "recall_diff_pp_ci_low", "recall_diff_pp_ci_high",
                                              "recall_diff_pp_cell_ci_low", "recall_diff_pp_cell_ci_high",
                                              "sigma_runs_pp")},
                       "bootstrap_b": int(b), "bootstrap_seed": int(seed)})
        rows = per_seed[(per_seed["variant"] == variant) & (per_seed["reference"] == reference)]
        for r in rows.itertuples(index=False):
            dots.append({"contrast": label, "variant": variant, "reference": reference, "primary": bool(prim),
                         "train_seed": int(r.train_seed), "n": int(r.n), "recall_variant_pp": r.recall_variant_pp,
                         "recall_reference_pp": r.recall_reference_pp, "recall_diff_pp": r.recall_diff_pp,
                         "exact_wins": int(r.exact_wins), "exact_losses": int(r.exact_losses),
                         "p_exact": r.p_exact})
    pooled = pd.DataFrame(pooled, columns=SEED_POOLED_COLUMNS)
    order = {c: i for i, c in enumerate(pooled.sort_values("primary", ascending=False, kind="stable")["contrast"])}
    pooled = pooled.sort_values("contrast", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    dots = pd.DataFrame(dots, columns=SEED_DOT_COLUMNS)
    dots = dots.sort_values(["contrast", "train_seed"], key=lambda s: s.map(order) if s.name == "contrast" else s,
                            kind="stable").reset_index(drop=True)
    return dots, pooled


def distance_data(df, model: str, task: str, b: int, seed: int = 0):
    """Recall against the needle's distance to the question, per variant: (bins, d50) from tables.distance_table on
    this model x task's cells, so with the aggregate stage's `b` and `seed` the numbers are distance.csv's. bins gets
    `x`, the bin's geometric centre (256 for [0, 512)) where the chart puts its point. Cells without a recorded
    distance are left out (none left: both frames empty)."""
    from .tables import distance_table

    sel = select(df, model, task)
    table = distance_table(sel, b=b, seed=seed)
    bins = table[table["kind"] == "bin"].copy()
    bins["x"] = [math.sqrt(lo * hi) if lo > 0 else hi / 2 for lo, hi in zip(bins["bin_lo"], bins["bin_hi"])]
    d50 = table[table["kind"] == "d50"].copy()
    return bins.reset_index(drop=True), d50.reset_index(drop=True)
