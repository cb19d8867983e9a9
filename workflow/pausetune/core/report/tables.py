"""The tables `pausetune aggregate` writes from the eval cells: what each holds, and the statistics behind it.

Each function below returns one table as a DataFrame; the aggregate stage writes them into results/tables/:

cells.parquet
    One row per cell, every field flattened: nested dicts become dotted columns (``haystack.order_sha256``,
    ``versions.transformers``), lists become JSON strings (``needle_positions`` = ``"[812, 1630]"``,
    ``expected`` = ``'[["sandwich", "Dolores Park"]]'``). A ``path`` column names the source file.
    Sorted by model, variant, task, seed, length, depth.

summary.csv  (tidy, long; one row per group, ``kind`` says which grouping)
    columns: kind, model, variant, task, band, band_lo, band_hi, n, mean_score, score_sem, mean_recall, exact_rate
    - kind ``overall``: one row per model x variant x task over all its cells (band ``all``).
    - kind ``depth_band``: needle depth in bands [0,20) [20,40) [40,60) [60,80) [80,100]: left-closed, the last
      band closed on both sides so depth 100 lands in ``80-100`` and depth 20 in ``20-40``.
    - kind ``length_band``: context length in octaves anchored at 1,000 tokens: [1000*2^k, 1000*2^(k+1)),
      labelled ``1K-2K``, ``2K-4K`` ... ``128K-256K`` (``500-1K`` below). On the paper's doubling grid
      (1K, 2K, 4K ... 128K) every length is its own band; a linear grid (1K..16K in 35 steps) gets 4-5 bands.
    Bands with no cell get no row. ``n`` is the number of scored cells behind the row; ``score_sem`` the
    standard error of the mean score (cells treated as independent; NaN for n < 2).

deltas.csv  (one row per comparison: variant against a reference variant, per model x task)
    columns: model, task, variant, reference, n (matched cells), n_variant, n_reference, mean_variant,
    mean_reference, diff, diff_ci_low, diff_ci_high, pct, pct_ci_low, pct_ci_high, bootstrap_b, bootstrap_seed
    Comparisons: every variant against ``baseline`` (the paper's headline: average improvement in percent), and
    ``pause-tuned`` against ``plain-tuned`` and against ``pause-prompt`` (what tuning on pauses adds beyond
    tuning on the essays / beyond the markers alone). A comparison is made only when both variants have cells.
    Cells are matched on (model, task, seed, length, depth); only matched cells enter the means.
    ``pct`` = (mean_variant - mean_reference) / mean_reference x 100 on score; ``diff`` the same in score points.
    Intervals: paired percentile bootstrap, 95%: resample the matched cells with replacement ``B`` times
    (default 2000), recompute pct and diff each time, take the 2.5% and 97.5% quantiles. The generator of each
    comparison is seeded with (config seed, CRC32 of "model/task/variant/reference"), so an interval does not
    change when other variants or models are added to the grid.
    Then the exact test on the binary outcome (``exact``: every fact found): exact_wins / exact_losses (matched
    cells only the variant / only the reference got), p_exact (two-sided exact McNemar), p_holm (Holm-adjusted over
    every row of the table), and bootstrap_degenerate (every non-zero score difference has one sign: the percentile
    interval then ends at exactly 0 whatever n is, and p_exact is the figure to read). Last, recall on its own
    scale: recall_variant_pp, recall_reference_pp (mean recall x 100) and recall_diff_pp with its paired bootstrap
    interval (the score is 1 + 9 x recall, so its percent change depends on the arbitrary offset; points do not).

depth_profile.csv, length_profile.csv  (long; for `dvc plots`, template .dvc/plots/panels.json)
    columns: panel ("{model}/{task}"), series (the variant), model, task, variant, depth | length, n, mean_score,
    mean_recall
    One row per exact depth (over all lengths and seeds) or per exact length (over all depths and seeds).

measures.csv  (the per-cell measures of the mechanism, eval.measure; long, one row per group)
    columns: scope, model, task, variant, band, length, depth, n, mean_logprob, mean_needle_attention,
    mean_pause_attention, mean_sink_attention, mean_needle_ratio
    scope ``overall`` (band ``all``), ``depth_band`` (the bands above), ``point`` (one exact length x depth, over
    seeds). ``mean_logprob`` is the mean of the cells' ``answer_logprob_mean`` (the summed teacher-forced log-prob
    of each expected answer, averaged over a cell's answers); the attention columns are the layer means of the last
    prompt token's attention share on the needle, the pauses and the first 4 tokens, and the needle's share over
    its share of the tokens. Cells without measures (eval.measure off, or made before it) are left out (``n``
    counts the cells that have the measure); a grid without any measure gives a table with the header only.

measure_deltas.csv  (paired comparisons of the measures, the score's design)
    columns: metric, scope, model, task, variant, reference, band, length, depth, n, mean_variant,
    mean_reference, diff, diff_ci_low, diff_ci_high, bootstrap_b, bootstrap_seed
    metric ``logprob`` | ``needle_attention`` | ``pause_attention`` (the last only between two paused variants),
    for the comparisons of deltas.csv, per scope (overall, depth band, point) on the cells matched as there.
    Differences only (a percentage of a log-prob means nothing); the same paired percentile bootstrap, seeded
    with (config seed, CRC32 of "model/task|metric|scope|band/variant/reference").

layer_attention.csv  (where in the network attention moves)
    columns: model, task, variant, layer, n, needle, pause, sink, rest: mean over cells of each layer's shares.

u_shape.csv  (is the middle lost? one row per model x task x variant (x reference) x scope)
    columns: model, task, variant, reference, scope, lengths, fill_max, runs, n_edge, n_middle, recall_edge_pp,
    recall_middle_pp, u_pp, u_ci_low, u_ci_high, bootstrap_b
    The U depth: mean recall of the edge cells (needle depth <= 10 or >= 90) minus that of the middle cells
    (25 <= depth <= 75), in points; > 0 is a lost-in-the-middle U. scope ``half_window``: the lengths that fill at
    most half the model's window (models.X.max_context; where a U shows most clearly), ``all``, and each length
    (``len{N}``). A row with a reference holds the difference of the two U depths (variant - reference), paired:
    two tuned arms within a training seed, a tuned arm and an untrained one each run with the one untrained set.
    Interval: 95% percentile bootstrap that resamples training runs, then lengths within a run, then the edge and
    the middle depths within a length (the same draws for both arms of a difference), seeded per row as deltas.csv.

distance.csv  (how far the fact sits from the question; one row per model x task x variant x kind)
    columns: model, task, variant, kind, bin_lo, bin_hi, n, runs, recall_pp, d50, d50_ci_low, d50_ci_high, slope,
    status, bootstrap_b
    kind ``bin``: mean recall of the cells whose needle_distance (tokens from the needle's end to the question's
    first token; cells record it) lies in [bin_lo, bin_hi), bins [0, 512), then doubling. kind ``d50``: the distance
    at which a logistic fit of recall on log2(1 + distance) crosses 50% (d50), its 95% interval from a bootstrap
    that resamples training runs, then cells within a run, and the fit's slope per doubling; ``status`` says
    ``crosses`` (inside the distances measured), ``above`` / ``below`` (recall stays on one side of 50% over
    them: no d50) or ``flat`` (recall does not fall with distance). Cells made before the field are left out.

effective_length.csv  (the longest context a variant keeps; one row per model x task x variant x rule)
    columns: model, task, variant, rule, threshold, short_recall_pp, effective_length, el_ci_low, el_ci_high, runs,
    lengths, bootstrap_b
    The largest length L of the grid such that mean recall stays at or above the threshold at every length up to
    L (0: already below at the shortest). rule ``threshold``: report.effective_length.threshold; rule ``fraction``:
    that share of the variant's own recall at the shortest length (short_recall_pp). Interval: the same rule on
    bootstrap resamples of training runs, then cells within a (run, length), percentiles of the lengths it gives.

summary.json  (flat keys for DVC metrics; floats rounded to 4 decimals, NaN written as null)
    {model}/{variant}/{task}/mean_score | mean_recall | exact_rate | n
    {model}/{variant}/{task}/pct_vs_baseline | pct_ci_low | pct_ci_high | diff_vs_baseline | n_matched
    {model}/{variant}/{task}/pct_vs_{reference} | pct_vs_{reference}_ci_low | pct_vs_{reference}_ci_high
        | diff_vs_{reference} | n_matched_vs_{reference}      (for the non-baseline references)
    {model}/{variant}/{task}/mean_logprob | mean_needle_attention | mean_pause_attention   (cells with measures)
    {model}/{variant}/{task}/{metric}_diff_vs_{reference} | ..._ci_low | ..._ci_high     (overall measure deltas)
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable

from ..design import COMPARISONS, DEFAULT_PRIMARY, KEY, MATCH, PAUSED, TUNED, UNTRAINED, VARIANTS, fmt_tokens
from ..io import PausetuneError, read_json
from .stats import (DEFAULT_BOOTSTRAP, comparison_seed, hierarchical_bootstrap, holm, mcnemar_exact,
                    minimum_detectable_effect, paired_bootstrap, runs_needed, variance_components)

REQUIRED = [k for k in KEY if k != "train_seed"] + ["score"]  # train_seed: absent in untrained (and older) cells
# metric name in the measure tables -> the cell field it averages
MEASURE_COLUMNS = {"logprob": "answer_logprob_mean", "needle_attention": "needle_attention",
                   "pause_attention": "pause_attention", "sink_attention": "sink_attention",
                   "needle_ratio": "needle_attention_ratio"}
DELTA_METRICS = ("logprob", "needle_attention", "pause_attention")
LAYER_PARTS = ("needle", "pause", "sink", "rest")
DEPTH_EDGES = [0, 20, 40, 60, 80, 100]
LENGTH_ANCHOR = 1000


def variant_rank(variant: str) -> int:
    """Design order (core.design.VARIANTS) for sorting rows; a variant outside it after them."""
    return VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)


# ----------------------------------------------------------------------------------------------- reading


def flatten(obj: dict, prefix: str = "") -> dict:
    """Nested dicts -> dotted keys; lists -> JSON strings (parquet-safe, round-trips with json.loads)."""
    out = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            if v:
                out.update(flatten(v, name + "."))
            else:
                out[name] = None
        elif isinstance(v, (list, tuple)):
            out[name] = json.dumps(list(v), ensure_ascii=False)
        else:
            out[name] = v
    return out


def load_cells(paths: Iterable[str | os.PathLike], skip_bad: bool = False, skipped: list | None = None) -> list[dict]:
    """The cells, flattened. A damaged cell fails in one line naming it, or with `skip_bad` is left out and
    recorded in `skipped` ({path, reason}) for the tables manifest and the results page."""
    cells = []
    for p in paths:
        try:
            cell = read_json(p)
            if not isinstance(cell, dict):
                raise PausetuneError(f"{p}: an eval cell must be a JSON object")
            missing = [k for k in REQUIRED if k not in cell]
            if missing:
                raise PausetuneError(f"{p}: eval cell lacks key(s) {missing}")
        except PausetuneError as e:
            if not skip_bad:
                raise PausetuneError(f"{e}; delete it and rerun (Snakemake recomputes its block), or set report."
                                     f"skip_bad_cells: true to leave it out (the results page says so)") from None
            if skipped is not None:
                skipped.append({"path": str(p), "reason": str(e)})
            continue
        cell = flatten(cell)
        cell["path"] = str(p)
        cells.append(cell)
    return cells


def cells_frame(cells: list[dict]):
    """The cells.parquet table: one row per cell, typed key columns, sorted, duplicates refused."""
    import pandas as pd

    if not cells:
        raise PausetuneError("no eval cells given (--cells / --cells-dir / --cells-from matched nothing)")
    df = pd.DataFrame(cells)
    for col in ("model", "variant", "task"):
        df[col] = df[col].astype(str)
    if "train_seed" not in df:
        df["train_seed"] = None
    try:
        df["train_seed"] = df["train_seed"].map(lambda x: UNTRAINED if x is None or (isinstance(x, float) and
                                                                                     math.isnan(x)) else x)
        df["train_seed"] = df["train_seed"].astype("int64")
        df["seed"] = df["seed"].astype("int64")
        df["length"] = df["length"].astype("int64")
        df["depth"] = df["depth"].astype("float64")
        df["score"] = pd.to_numeric(df["score"], errors="raise").astype("float64")
    except (TypeError, ValueError) as e:
        raise PausetuneError(f"eval cells: a key field is not numeric ({e})") from None
    for col in ("recall", "closed_book.recall") + tuple(MEASURE_COLUMNS.values()):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    if "exact" in df:
        df["exact"] = df["exact"].map(lambda x: None if x is None or (isinstance(x, float) and math.isnan(x))
                                      else bool(x)).astype("boolean")
    dup = df[df.duplicated(KEY, keep=False)]
    if len(dup):
        first = dup.sort_values(KEY).head(2)["path"].tolist()
        raise PausetuneError(f"two eval cells share model/variant/train_seed/task/seed/length/depth: {first[0]} and "
                             f"{first[1]}")
    # Columns of mixed types (int in one cell, str in another) would not go into parquet: store them as JSON.
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(x) for x in df[col] if x is not None and not (isinstance(x, float) and math.isnan(x))}
            if len(kinds) > 1:
                df[col] = df[col].map(lambda x: None if x is None else (x if isinstance(x, str) else json.dumps(x)))
    front = [c for c in KEY + ["score", "recall", "exact"] if c in df]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values(KEY, kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- bands


def depth_band(depth: float) -> tuple[str, float, float]:
    """[0,20) [20,40) [40,60) [60,80) [80,100]: label, low, high."""
    d = float(depth)
    if not 0 <= d <= 100:
        raise PausetuneError(f"needle depth {depth}: expected 0..100 %")
    i = min(int(d // 20), 4)
    lo, hi = DEPTH_EDGES[i], DEPTH_EDGES[i + 1]
    return f"{lo}-{hi}", float(lo), float(hi)


def length_band(length: int) -> tuple[str, float, float]:
    """Octaves anchored at 1,000 tokens: [1000*2^k, 1000*2^(k+1)): label, low, high."""
    if length < 1:
        raise PausetuneError(f"context length {length}: expected a positive number of tokens")
    k = math.floor(math.log2(length / LENGTH_ANCHOR))
    lo, hi = LENGTH_ANCHOR * 2.0**k, LENGTH_ANCHOR * 2.0 ** (k + 1)
    # log2 rounding at exact powers: keep lo <= length < hi
    if length < lo:
        lo, hi = lo / 2, lo
    elif length >= hi:
        lo, hi = hi, hi * 2
    return f"{fmt_tokens(lo)}-{fmt_tokens(hi)}", lo, hi


# ----------------------------------------------------------------------------------------------- summary

SUMMARY_COLUMNS = ["kind", "model", "variant", "task", "band", "band_lo", "band_hi", "n", "mean_score",
                   "score_sem", "mean_recall", "exact_rate", "runs", "closed_book_n", "closed_book_recall"]
DELTA_COLUMNS = ["model", "task", "variant", "reference", "primary", "n", "n_variant", "n_reference", "mean_variant",
                 "mean_reference", "diff", "diff_ci_low", "diff_ci_high", "pct", "pct_ci_low", "pct_ci_high",
                 "bootstrap_b", "bootstrap_seed", "exact_wins", "exact_losses", "p_exact", "p_holm",
                 "bootstrap_degenerate", "recall_variant_pp", "recall_reference_pp", "recall_diff_pp",
                 "recall_diff_pp_ci_low", "recall_diff_pp_ci_high", "recall_diff_pp_cell_ci_low",
                 "recall_diff_pp_cell_ci_high", "runs", "points", "sigma_runs_pp", "mde_pp"]
SEED_DELTA_COLUMNS = ["model", "task", "variant", "reference", "train_seed", "n", "recall_variant_pp",
                      "recall_reference_pp", "recall_diff_pp", "exact_wins", "exact_losses", "p_exact"]
SEED_SUMMARY_COLUMNS = ["model", "variant", "task", "train_seed", "n", "mean_recall", "exact_rate",
                        "closed_book_recall"]
VARIANCE_COLUMNS = ["model", "task", "variant", "reference", "runs", "points_per_run", "cells_per_point",
                    "var_run_pp2", "var_point_pp2", "var_cell_pp2", "sigma_runs_pp", "mde_pp", "effect_pp",
                    "runs_for_effect", "runs_for_10pp"]


def _group_stats(g) -> dict:
    import numpy as np

    s = g["score"].dropna()
    n = int(len(s))
    rec = g["recall"].dropna() if "recall" in g else []
    ex = g["exact"].dropna() if "exact" in g else []
    cb = g["closed_book.recall"].dropna() if "closed_book.recall" in g else []
    return {
        "n": n,
        "mean_score": float(s.mean()) if n else math.nan,
        "score_sem": float(s.std(ddof=1) / np.sqrt(n)) if n > 1 else math.nan,
        "mean_recall": float(np.mean(rec)) if len(rec) else math.nan,
        "exact_rate": float(np.mean(ex.astype(float))) if len(ex) else math.nan,
        "runs": int(g["train_seed"].nunique()) if "train_seed" in g else 1,
        "closed_book_n": int(len(cb)),
        "closed_book_recall": float(np.mean(cb)) if len(cb) else math.nan,
    }


def summarize(df):
    """summary.csv as a DataFrame (see the module docstring)."""
    import pandas as pd

    df = df[df["score"].notna()].copy()
    df["_depth_band"] = [depth_band(d) for d in df["depth"]]
    df["_length_band"] = [length_band(n) for n in df["length"]]
    rows = []
    for (model, variant, task), g in df.groupby(["model", "variant", "task"], sort=True):
        rows.append({"kind": "overall", "model": model, "variant": variant, "task": task, "band": "all",
                     "band_lo": math.nan, "band_hi": math.nan, **_group_stats(g)})
        for kind, col in (("depth_band", "_depth_band"), ("length_band", "_length_band")):
            for band, gb in sorted(g.groupby(col, sort=False), key=lambda kv: kv[0][1]):
                rows.append({"kind": kind, "model": model, "variant": variant, "task": task, "band": band[0],
                             "band_lo": band[1], "band_hi": band[2], **_group_stats(gb)})
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    order = {"overall": 0, "depth_band": 1, "length_band": 2}
    out["_k"] = out["kind"].map(order)
    out["_v"] = out["variant"].map(variant_rank)
    out = out.sort_values(["model", "task", "_k", "_v", "variant", "band_lo"], kind="stable", na_position="first")
    return out.drop(columns=["_k", "_v"]).reset_index(drop=True)


def profile(df, axis: str):
    """Mean score per model x task x variant x exact depth (or length): the curves `dvc plots` draws."""
    import pandas as pd

    df = df[df["score"].notna()]
    rows = []
    for (model, task, variant, x), g in df.groupby(["model", "task", "variant", axis], sort=True):
        rows.append({"panel": f"{model}/{task}", "series": variant, "model": model, "task": task, "variant": variant, axis: x,
                     "n": len(g), "mean_score": float(g["score"].mean()),
                     "mean_recall": float(g["recall"].mean()) if "recall" in g else math.nan})
    return pd.DataFrame(rows, columns=["panel", "series", "model", "task", "variant", axis, "n", "mean_score", "mean_recall"])


def matched(df, model: str, task: str, variant: str, reference: str):
    """Matched cells of two variants: a frame with MATCH columns, `run` (the training seed the pair belongs to) and
    score_v, score_r (sorted, deterministic). Two tuned variants pair within a training seed; a tuned variant and an
    untrained one pair each run's cell with the one untrained cell (which does not depend on the run)."""
    sel = df[(df["model"] == model) & (df["task"] == task) & df["score"].notna()]
    cols = MATCH + ["train_seed", "score"] + [c for c in ("exact", "recall") if c in df]
    a = sel[sel["variant"] == variant][cols]
    r = sel[sel["variant"] == reference][cols]
    both = bool((a["train_seed"] != UNTRAINED).any() and (r["train_seed"] != UNTRAINED).any())
    on = MATCH + ["train_seed"] if both else MATCH
    m = a.merge(r, on=on, suffixes=("_v", "_r"), how="inner")
    if both:
        m = m.rename(columns={"train_seed": "run"})
    else:  # the tuned arm's seed (neither tuned: -1 for all)
        m["run"] = m[["train_seed_v", "train_seed_r"]].max(axis=1)
        m = m.drop(columns=["train_seed_v", "train_seed_r"])
    return m.sort_values(["run"] + MATCH, kind="stable").reset_index(drop=True), len(a), len(r)


def primary_of(report: dict | None) -> dict:
    """The declared primary endpoint (report.primary), else the default one (core.design.DEFAULT_PRIMARY): the
    tables mark its row where the cells have it."""
    declared = (report or {}).get("primary")
    return {"lengths": None, **(declared or DEFAULT_PRIMARY)}


def contrasts(df, primary: dict | None = None):
    """Every comparison the cells allow: ((model, task, variant, reference), matched frame, n_variant,
    n_reference, is_primary); the primary endpoint's frame keeps only its lengths."""
    present = df[df["score"].notna()].groupby(["model", "task"])["variant"].agg(set)
    named = (primary["task"], primary["variant"], primary["reference"]) if primary else None
    for (model, task), variants in present.items():
        for variant, reference in COMPARISONS:
            if variant not in variants or reference not in variants:
                continue
            m, n_v, n_r = matched(df, model, task, variant, reference)
            prim = (task, variant, reference) == named
            if prim and primary.get("lengths"):
                m = m[m["length"].isin(primary["lengths"])].reset_index(drop=True)
            yield (model, task, variant, reference), m, n_v, n_r, prim


def deltas(df, b: int = DEFAULT_BOOTSTRAP, seed: int = 0, primary: dict | None = None):
    """deltas.csv as a DataFrame (see the module docstring)."""
    import pandas as pd

    rows = []
    for (model, task, variant, reference), m, n_v, n_r, prim in contrasts(df, primary):
        cseed = comparison_seed(seed, model, task, variant, reference)
        stats = paired_bootstrap(m["score_v"].to_numpy(), m["score_r"].to_numpy(), b=b, seed=cseed)
        rows.append({"model": model, "task": task, "variant": variant, "reference": reference, "primary": prim,
                     "n": len(m), "n_variant": n_v, "n_reference": n_r,
                     "mean_variant": float(m["score_v"].mean()) if len(m) else math.nan,
                     "mean_reference": float(m["score_r"].mean()) if len(m) else math.nan,
                     **stats, "bootstrap_b": int(b), "bootstrap_seed": int(seed), **exact_test(m),
                     **recall_points(m, b, cseed)})
    out = pd.DataFrame(rows, columns=DELTA_COLUMNS)
    # Holm over the secondary contrasts (the family); the primary endpoint is tested alone, unadjusted.
    secondary = ~out["primary"].astype(bool)
    out["p_holm"] = math.nan
    out.loc[secondary, "p_holm"] = holm(out.loc[secondary, "p_exact"].tolist())
    out.loc[~secondary, "p_holm"] = out.loc[~secondary, "p_exact"]
    if len(out):
        out["_p"] = (~out["primary"].astype(bool)).astype(int)
        out = out.sort_values("_p", kind="stable").drop(columns="_p").reset_index(drop=True)
    return out


def _points(m) -> list:
    return list(zip(m["length"].astype(int), m["depth"].astype(float)))


def recall_points(m, b: int, cseed) -> dict:
    """Mean recall of both arms and their paired difference in percentage points: the interval resamples training
    runs, then (length, depth) points, then cells (stats.hierarchical_bootstrap), so it carries run-to-run and
    point-to-point variance; the cell-level paired bootstrap's interval beside it (`_cell_`) for comparison. Then
    the run-level facts: runs, points, sigma_runs_pp (SD of the runs' own contrasts) and mde_pp (the effect this
    design detects with 80% power at alpha 0.05, from the measured variance components)."""
    keys = ("recall_variant_pp", "recall_reference_pp", "recall_diff_pp", "recall_diff_pp_ci_low",
            "recall_diff_pp_ci_high", "recall_diff_pp_cell_ci_low", "recall_diff_pp_cell_ci_high", "runs", "points",
            "sigma_runs_pp", "mde_pp")
    if "recall_v" not in m or not len(m):
        return {k: math.nan for k in keys}
    import numpy as np

    v, r = 100 * m["recall_v"].to_numpy(dtype=float), 100 * m["recall_r"].to_numpy(dtype=float)
    cell = paired_bootstrap(v, r, b=b, seed=cseed)
    runs, points = m["run"].tolist(), _points(m)
    hb = hierarchical_bootstrap(runs, points, v - r, b=b, seed=cseed)
    per_run = [float(np.mean((v - r)[m["run"].to_numpy() == k])) for k in dict.fromkeys(runs)]
    comp = variance_components(runs, points, v - r)
    return {"recall_variant_pp": float(v.mean()), "recall_reference_pp": float(r.mean()),
            "recall_diff_pp": cell["diff"], "recall_diff_pp_ci_low": hb["ci_low"],
            "recall_diff_pp_ci_high": hb["ci_high"], "recall_diff_pp_cell_ci_low": cell["diff_ci_low"],
            "recall_diff_pp_cell_ci_high": cell["diff_ci_high"], "runs": hb["runs"],
            "points": len(set(points)),
            "sigma_runs_pp": float(np.std(per_run, ddof=1)) if len(per_run) > 1 else math.nan,
            "mde_pp": minimum_detectable_effect(comp)}


def seed_deltas(df, primary: dict | None = None):
    """seed_deltas.csv: every contrast per training run (a tuned arm's training seed; -1 where neither arm is
    tuned): the per-seed dot plot's data, and what the run-to-run spread is made of."""
    import pandas as pd

    rows = []
    for (model, task, variant, reference), m, _, _, _ in contrasts(df, primary):
        if "recall_v" not in m:
            continue
        for run, g in m.groupby("run", sort=True):
            t = exact_test(g)
            rows.append({"model": model, "task": task, "variant": variant, "reference": reference,
                         "train_seed": int(run), "n": len(g), "recall_variant_pp": 100 * float(g["recall_v"].mean()),
                         "recall_reference_pp": 100 * float(g["recall_r"].mean()),
                         "recall_diff_pp": 100 * float((g["recall_v"] - g["recall_r"]).mean()),
                         "exact_wins": t["exact_wins"], "exact_losses": t["exact_losses"], "p_exact": t["p_exact"]})
    return pd.DataFrame(rows, columns=SEED_DELTA_COLUMNS)


def seed_summary(df):
    """seed_summary.csv: each variant's recall per training seed (untrained variants: one row, train_seed -1)."""
    import pandas as pd

    sel = df[df["score"].notna()]
    rows = []
    for (model, variant, task, run), g in sel.groupby(["model", "variant", "task", "train_seed"], sort=True):
        st = _group_stats(g)
        rows.append({"model": model, "variant": variant, "task": task, "train_seed": int(run), "n": st["n"],
                     "mean_recall": st["mean_recall"], "exact_rate": st["exact_rate"],
                     "closed_book_recall": st["closed_book_recall"]})
    out = pd.DataFrame(rows, columns=SEED_SUMMARY_COLUMNS)
    out["_v"] = out["variant"].map(variant_rank)
    return out.sort_values(["model", "task", "_v", "variant", "train_seed"], kind="stable").drop(
        columns="_v").reset_index(drop=True)


def variance_table(df, primary: dict | None = None):
    """variance_components.csv: per contrast, the recall difference's variance between training runs, between
    (length, depth) points within a run and between cells within a point (pp^2, method of moments), the minimum
    detectable effect of the design run, and how many runs per arm the observed effect and a 10-point one need."""
    import pandas as pd

    rows = []
    for (model, task, variant, reference), m, _, _, _ in contrasts(df, primary):
        if "recall_v" not in m or not len(m):
            continue
        d = 100 * (m["recall_v"].to_numpy(dtype=float) - m["recall_r"].to_numpy(dtype=float))
        comp = variance_components(m["run"].tolist(), _points(m), d)
        effect = abs(float(d.mean()))
        tuned = variant in TUNED or reference in TUNED
        rows.append({"model": model, "task": task, "variant": variant, "reference": reference,
                     "runs": comp["runs"], "points_per_run": comp["points_per_run"],
                     "cells_per_point": comp["cells_per_point"], "var_run_pp2": comp["run"],
                     "var_point_pp2": comp["point"], "var_cell_pp2": comp["cell"],
                     "sigma_runs_pp": math.sqrt(comp["run"]), "mde_pp": minimum_detectable_effect(comp),
                     "effect_pp": effect,
                     # with one run the between-run variance is not measured: no run count follows from it
                     "runs_for_effect": runs_needed(comp, effect) if tuned and effect > 0 and comp["runs"] > 1
                     else None,
                     "runs_for_10pp": runs_needed(comp, 10.0) if tuned and comp["runs"] > 1 else None})
    return pd.DataFrame(rows, columns=VARIANCE_COLUMNS)


def exact_test(m) -> dict:
    """The exact McNemar test on matched cells' binary `exact` outcomes, and whether the score bootstrap is
    degenerate (every non-zero paired difference of one sign)."""
    d = (m["score_v"] - m["score_r"]).to_numpy()
    nonzero = d[d != 0]
    degenerate = bool(len(nonzero)) and bool((nonzero > 0).all() or (nonzero < 0).all())
    if "exact_v" not in m or not len(m):
        return {"exact_wins": 0, "exact_losses": 0, "p_exact": math.nan, "bootstrap_degenerate": degenerate}
    v, r = m["exact_v"].fillna(0).astype(bool), m["exact_r"].fillna(0).astype(bool)
    wins, losses = int((v & ~r).sum()), int((r & ~v).sum())
    return {"exact_wins": wins, "exact_losses": losses, "p_exact": mcnemar_exact(wins, losses),
            "bootstrap_degenerate": degenerate}


# ----------------------------------------------------------------------------------------------- measures

MEASURE_TABLE_COLUMNS = ["scope", "model", "task", "variant", "band", "length", "depth", "n"] + [
    f"mean_{m}" for m in MEASURE_COLUMNS]
MEASURE_DELTA_COLUMNS = ["metric", "scope", "model", "task", "variant", "reference", "band", "length", "depth", "n",
                         "mean_variant", "mean_reference", "diff", "diff_ci_low", "diff_ci_high", "bootstrap_b",
                         "bootstrap_seed"]


def _measured(df):
    """The cells that carry measures (any of them), with a depth-band column."""
    cols = [c for c in MEASURE_COLUMNS.values() if c in df]
    if not cols:
        return df.iloc[0:0].assign(_band="")
    sel = df[df[cols].notna().any(axis=1)].copy()
    sel["_band"] = [depth_band(d)[0] for d in sel["depth"]]
    return sel


def _scopes(g):
    """(scope, band, length, depth, rows) for the overall, depth-band and point groupings of one frame."""
    yield "overall", "all", math.nan, math.nan, g
    for band, gb in sorted(g.groupby("_band"), key=lambda kv: float(kv[0].split("-")[0])):
        yield "depth_band", band, math.nan, math.nan, gb
    for (n, d), gp in g.groupby(["length", "depth"], sort=True):
        yield "point", "", int(n), float(d), gp


def measures_table(df):
    """measures.csv as a DataFrame (module docstring)."""
    import pandas as pd

    sel = _measured(df)
    rows = []
    for (model, task, variant), g in sel.groupby(["model", "task", "variant"], sort=True):
        for scope, band, n, d, gs in _scopes(g):
            row = {"scope": scope, "model": model, "task": task, "variant": variant, "band": band, "length": n,
                   "depth": d, "n": int(len(gs))}
            for m, col in MEASURE_COLUMNS.items():
                vals = gs[col].dropna() if col in gs else []
                row[f"mean_{m}"] = float(vals.mean()) if len(vals) else math.nan
            rows.append(row)
    out = pd.DataFrame(rows, columns=MEASURE_TABLE_COLUMNS)
    if len(out):
        out["_s"] = out["scope"].map({"overall": 0, "depth_band": 1, "point": 2})
        out["_v"] = out["variant"].map(variant_rank)
        out = out.sort_values(["model", "task", "_s", "_v", "variant", "band", "length", "depth"], kind="stable")
        out = out.drop(columns=["_s", "_v"]).reset_index(drop=True)
    return out


def measure_deltas(df, b: int = DEFAULT_BOOTSTRAP, seed: int = 0):
    """measure_deltas.csv as a DataFrame (module docstring)."""
    import pandas as pd

    sel = _measured(df)
    rows = []
    for (model, task), g in sel.groupby(["model", "task"], sort=True):
        present = set(g["variant"])
        for variant, reference in COMPARISONS:
            if variant not in present or reference not in present:
                continue
            for metric in DELTA_METRICS:
                col = MEASURE_COLUMNS[metric]
                both_paused = PAUSED.get(variant) and PAUSED.get(reference)
                if col not in g or (metric == "pause_attention" and not both_paused):
                    continue
                a = g[(g["variant"] == variant) & g[col].notna()][MATCH + ["_band", col]]
                r = g[(g["variant"] == reference) & g[col].notna()][MATCH + [col]]
                m = a.merge(r, on=MATCH, suffixes=("_v", "_r")).sort_values(MATCH, kind="stable")
                if m.empty:
                    continue
                for scope, band, n, d, gs in _scopes(m):
                    cseed = comparison_seed(seed, model, f"{task}|{metric}|{scope}|{band or f'{n}/{d:g}'}",
                                            variant, reference)
                    st = paired_bootstrap(gs[f"{col}_v"].to_numpy(), gs[f"{col}_r"].to_numpy(), b=b, seed=cseed)
                    rows.append({"metric": metric, "scope": scope, "model": model, "task": task, "variant": variant,
                                 "reference": reference, "band": band, "length": n, "depth": d, "n": int(len(gs)),
                                 "mean_variant": float(gs[f"{col}_v"].mean()),
                                 "mean_reference": float(gs[f"{col}_r"].mean()),
                                 **{k: st[k] for k in ("diff", "diff_ci_low", "diff_ci_high")},
                                 "bootstrap_b": int(b), "bootstrap_seed": int(seed)})
    return pd.DataFrame(rows, columns=MEASURE_DELTA_COLUMNS)


def layer_attention(df):
    """layer_attention.csv: per model x task x variant x layer, the mean share of each part (module docstring)."""
    import numpy as np
    import pandas as pd

    cols = [f"attention.{p}" for p in LAYER_PARTS]
    rows = []
    if all(c in df for c in cols):
        sel = df[df[cols[0]].notna()]
        for (model, task, variant), g in sel.groupby(["model", "task", "variant"], sort=True):
            parts = {p: [json.loads(x) if isinstance(x, str) else x for x in g[f"attention.{p}"]] for p in LAYER_PARTS}
            layers = {len(x) for x in parts["needle"]}
            if len(layers) != 1:
                raise PausetuneError(f"cells of {model}/{variant}/{task}: attention lists of different layer counts "
                                     f"{sorted(layers)}")
            means = {p: np.asarray(v, dtype=float).mean(axis=0) for p, v in parts.items()}
            for layer in range(layers.pop()):
                rows.append({"model": model, "task": task, "variant": variant, "layer": layer, "n": int(len(g)),
                             **{p: float(means[p][layer]) for p in LAYER_PARTS}})
    return pd.DataFrame(rows, columns=["model", "task", "variant", "layer", "n", *LAYER_PARTS])


U_COLUMNS = ["model", "task", "variant", "reference", "scope", "lengths", "fill_max", "runs", "n_edge", "n_middle",
             "recall_edge_pp", "recall_middle_pp", "u_pp", "u_ci_low", "u_ci_high", "bootstrap_b"]


def depth_class(depth: float) -> str | None:
    """'edge' (<= 10 or >= 90), 'middle' (25..75) or None (between: in neither side of the U)."""
    if depth <= 10 or depth >= 90:
        return "edge"
    if 25 <= depth <= 75:
        return "middle"
    return None


def _u_grid(g, lengths: list[int], depths: list[float]):
    """Recall (pp) per run as an array [runs, lengths, depths] (NaN where a cell is missing), and the runs."""
    import numpy as np

    runs = sorted(g["train_seed"].unique().tolist())
    arr = np.full((len(runs), len(lengths), len(depths)), np.nan)
    li, di, ri = ({x: i for i, x in enumerate(v)} for v in (lengths, depths, runs))
    for r in g[["train_seed", "length", "depth", "recall"]].itertuples(index=False):
        if r.length in li and r.depth in di:
            arr[ri[r.train_seed], li[r.length], di[r.depth]] = 100 * float(r.recall)
    return arr, runs


def _u_depth(arr, edge, middle):
    """U depth of a [..., lengths, depths] recall array: over lengths, mean of (edge mean - middle mean)."""
    import numpy as np

    with np.errstate(invalid="ignore"):
        return np.nanmean(np.nanmean(arr[..., edge], -1) - np.nanmean(arr[..., middle], -1), -1)


def _u_bootstrap(v, r, edge, middle, b: int, seed) -> tuple[float, float]:
    """Percentile interval of U(v) - U(r) (r None: of U(v)): runs, then lengths, then edge and middle depths, drawn
    once and applied to both arrays ([runs, lengths, depths]; r with one run is the untrained reference)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_runs, n_len, _ = v.shape
    e_idx, m_idx = np.flatnonzero(edge), np.flatnonzero(middle)
    ri = rng.integers(0, n_runs, size=(b, n_runs))
    li = rng.integers(0, n_len, size=(b, n_runs, n_len))
    ei = e_idx[rng.integers(0, len(e_idx), size=(b, n_runs, n_len, len(e_idx)))]
    mi = m_idx[rng.integers(0, len(m_idx), size=(b, n_runs, n_len, len(m_idx)))]

    def u(a, runs):
        x = a[runs[..., None, None], li[..., None], ei]
        y = a[runs[..., None, None], li[..., None], mi]
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.nanmean(x, -1) - np.nanmean(y, -1), axis=(-1, -2))

    d = u(v, ri)
    if r is not None:
        d = d - u(r, ri if r.shape[0] == n_runs else np.zeros_like(ri))
    lo, hi = np.nanquantile(d, [0.025, 0.975])
    return float(lo), float(hi)


def u_shape(df, max_context: dict | None = None, b: int = DEFAULT_BOOTSTRAP, seed: int = 0):
    """u_shape.csv (see the module docstring)."""
    import numpy as np
    import pandas as pd

    rows = []
    if "recall" not in df:
        return pd.DataFrame(rows, columns=U_COLUMNS)
    sel = df[df["score"].notna() & df["recall"].notna()]
    for (model, task), g in sel.groupby(["model", "task"], sort=True):
        depths = sorted(g["depth"].unique().tolist())
        classes = [depth_class(d) for d in depths]
        edge, middle = np.array([c == "edge" for c in classes]), np.array([c == "middle" for c in classes])
        if not edge.any() or not middle.any():
            continue
        all_lengths = sorted(int(x) for x in g["length"].unique())
        window = (max_context or {}).get(model)
        scopes = [("all", all_lengths)]
        if window:
            half = [n for n in all_lengths if n <= window / 2]
            if half and half != all_lengths:
                scopes.insert(0, ("half_window", half))
        scopes += [(f"len{n}", [n]) for n in all_lengths] if len(all_lengths) > 1 else []
        grids = {v: _u_grid(h, all_lengths, depths) for v, h in g.groupby("variant")}
        pairs = [(v, "") for v in sorted(grids, key=variant_rank)]
        pairs += [(v, r) for v, r in COMPARISONS if v in grids and r in grids]
        for variant, reference in pairs:
            (va, vruns), (ra, rruns) = grids[variant], grids.get(reference, (None, None))
            if ra is not None and ra.shape[0] > 1:  # two tuned arms: the runs both have, paired
                both = [k for k in vruns if k in rruns]
                va, ra = va[[vruns.index(k) for k in both]], ra[[rruns.index(k) for k in both]]
            for scope, lengths in scopes:
                li = [all_lengths.index(n) for n in lengths]
                v, r = va[:, li], (ra[:, li] if ra is not None else None)
                u_v = float(np.mean(_u_depth(v, edge, middle)))
                u = u_v - float(np.mean(_u_depth(r, edge, middle))) if r is not None else u_v
                cseed = comparison_seed(seed, model, task, variant, f"{reference}|u|{scope}")
                lo, hi = _u_bootstrap(v, r, edge, middle, b, cseed)
                with np.errstate(invalid="ignore"):
                    rows.append({"model": model, "task": task, "variant": variant, "reference": reference,
                                 "scope": scope, "lengths": " ".join(map(str, lengths)),
                                 "fill_max": max(lengths) / window if window else math.nan, "runs": int(v.shape[0]),
                                 "n_edge": int(np.isfinite(v[..., edge]).sum()),
                                 "n_middle": int(np.isfinite(v[..., middle]).sum()),
                                 "recall_edge_pp": float(np.nanmean(v[..., edge])),
                                 "recall_middle_pp": float(np.nanmean(v[..., middle])),
                                 "u_pp": u, "u_ci_low": lo, "u_ci_high": hi, "bootstrap_b": int(b)})
    return pd.DataFrame(rows, columns=U_COLUMNS)


DISTANCE_COLUMNS = ["model", "task", "variant", "kind", "bin_lo", "bin_hi", "n", "runs", "recall_pp", "d50",
                    "d50_ci_low", "d50_ci_high", "slope", "status", "bootstrap_b"]
EFFECTIVE_COLUMNS = ["model", "task", "variant", "rule", "threshold", "short_recall_pp", "effective_length",
                     "el_ci_low", "el_ci_high", "runs", "lengths", "bootstrap_b"]


def logistic_fit(x, y, ridge: float = 1e-3, iters: int = 50) -> tuple[float, float]:
    """(a, b) of recall ~ sigmoid(a + b x) by Newton's method on the cross-entropy (fractional recall allowed), a
    small ridge on b so that perfectly separated data still give a finite, steep fit."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    a, b = 0.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a + b * x)))
        w = p * (1 - p) + 1e-12
        g = np.array([np.sum(p - y), np.sum((p - y) * x) + ridge * b])
        h = np.array([[np.sum(w), np.sum(w * x)], [np.sum(w * x), np.sum(w * x * x) + ridge]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(a), float(b)


def d50_of(distance, recall) -> tuple[float, float, str]:
    """(d50 in tokens, slope per doubling, status) from cells' distances and recalls (module docstring)."""
    import numpy as np

    x = np.log2(1 + np.asarray(distance, dtype=float))
    y = np.asarray(recall, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan, math.nan, "flat"
    a, b = logistic_fit(x, y)
    if b >= 0:
        return math.nan, b, "flat"
    x50 = -a / b
    if x50 < x.min():
        return math.nan, b, "below"
    if x50 > x.max():
        return math.nan, b, "above"
    return float(2 ** x50 - 1), b, "crosses"


def distance_table(df, b: int = DEFAULT_BOOTSTRAP, seed: int = 0):
    """distance.csv (see the module docstring)."""
    import numpy as np
    import pandas as pd

    rows = []
    if "needle_distance" not in df or "recall" not in df:
        return pd.DataFrame(rows, columns=DISTANCE_COLUMNS)
    sel = df[df["score"].notna() & df["recall"].notna() & df["needle_distance"].notna()]
    for (model, task, variant), g in sel.groupby(["model", "task", "variant"], sort=True):
        dist, rec = g["needle_distance"].to_numpy(dtype=float), g["recall"].to_numpy(dtype=float)
        runs = g["train_seed"].to_numpy()
        edges = [0, 512]
        while edges[-1] <= dist.max():
            edges.append(edges[-1] * 2)
        for lo, hi in zip(edges, edges[1:]):
            m = (dist >= lo) & (dist < hi)
            if m.any():
                rows.append({"model": model, "task": task, "variant": variant, "kind": "bin", "bin_lo": lo,
                             "bin_hi": hi, "n": int(m.sum()), "runs": len(set(runs[m])),
                             "recall_pp": 100 * float(rec[m].mean())})
        d50, slope, status = d50_of(dist, rec)
        rng = np.random.default_rng(comparison_seed(seed, model, task, variant, "d50"))
        by_run = [np.flatnonzero(runs == r) for r in sorted(set(runs))]
        draws = []
        for _ in range(b):
            idx = np.concatenate([rng.choice(by_run[k], size=len(by_run[k]))
                                  for k in rng.integers(0, len(by_run), size=len(by_run))])
            d, _, st = d50_of(dist[idx], rec[idx])
            draws.append(d if st == "crosses" else (np.inf if st == "above" else 0.0 if st == "below" else np.nan))
        draws = np.asarray(draws, dtype=float)
        ok = draws[~np.isnan(draws)]
        ci = np.quantile(ok, [0.025, 0.975]) if len(ok) else [math.nan, math.nan]
        rows.append({"model": model, "task": task, "variant": variant, "kind": "d50", "n": int(len(g)),
                     "runs": len(by_run), "recall_pp": 100 * float(rec.mean()), "d50": d50,
                     "d50_ci_low": float(ci[0]), "d50_ci_high": float(ci[1]), "slope": slope, "status": status,
                     "bootstrap_b": int(b)})
    return pd.DataFrame(rows, columns=DISTANCE_COLUMNS)


def effective_length_of(lengths, recalls, threshold: float) -> int:
    """The largest length whose recall, and every shorter length's, is at or above threshold (0: none)."""
    best = 0
    for n, r in sorted(zip(lengths, recalls)):
        if r < threshold:
            break
        best = int(n)
    return best


def effective_lengths(df, rules: dict | None = None, b: int = DEFAULT_BOOTSTRAP, seed: int = 0):
    """effective_length.csv (see the module docstring)."""
    import numpy as np
    import pandas as pd

    rules = {"threshold": 0.5, "fraction": 0.85, **(rules or {})}
    rows = []
    if "recall" not in df:
        return pd.DataFrame(rows, columns=EFFECTIVE_COLUMNS)
    sel = df[df["score"].notna() & df["recall"].notna()]
    for (model, task, variant), g in sel.groupby(["model", "task", "variant"], sort=True):
        lengths = sorted(int(x) for x in g["length"].unique())
        runs = sorted(g["train_seed"].unique().tolist())
        cells = {(r, n): g[(g["train_seed"] == r) & (g["length"] == n)]["recall"].to_numpy(dtype=float)
                 for r in runs for n in lengths}

        def curve(run_draw, cell_draw):
            out = []
            for j, n in enumerate(lengths):
                vals = [cells[(runs[k], n)][cell_draw[i][j]] if cell_draw is not None else cells[(runs[k], n)]
                        for i, k in enumerate(run_draw)]
                vals = [v for v in vals if len(v)]
                out.append(float(np.mean(np.concatenate(vals))) if vals else math.nan)
            return out

        point = curve(range(len(runs)), None)
        rng = np.random.default_rng(comparison_seed(seed, model, task, variant, "effective_length"))
        boots = []
        for _ in range(b):
            rd = rng.integers(0, len(runs), size=len(runs))
            cd = [[rng.integers(0, max(1, len(cells[(runs[k], n)])), size=len(cells[(runs[k], n)]))
                   for n in lengths] for k in rd]
            boots.append(curve(rd, cd))
        for rule in ("threshold", "fraction"):
            thr = (lambda c: rules["threshold"]) if rule == "threshold" else (lambda c: rules["fraction"] * c[0])
            # A share of nothing is no threshold: with no recall at the shortest length (in the data or in a draw)
            # the fraction rule is undefined, not "every length" (it used to report the longest length).
            defined = (lambda c: True) if rule == "threshold" else (lambda c: c[0] > 0)
            el, lo, hi = None, None, None
            if defined(point):
                el = effective_length_of(lengths, point, thr(point))
                dist = [effective_length_of(lengths, c, thr(c)) for c in boots if defined(c)]
                lo, hi = (int(q) for q in np.quantile(dist, [0.025, 0.975], method="inverted_cdf"))
            rows.append({"model": model, "task": task, "variant": variant, "rule": rule,
                         "threshold": thr(point), "short_recall_pp": 100 * point[0], "effective_length": el,
                         "el_ci_low": lo, "el_ci_high": hi, "runs": len(runs),
                         "lengths": " ".join(map(str, lengths)), "bootstrap_b": int(b)})
    out = pd.DataFrame(rows, columns=EFFECTIVE_COLUMNS)
    for col in ("effective_length", "el_ci_low", "el_ci_high"):
        out[col] = out[col].astype("Int64")  # integers, empty where undefined
    return out


def _num(x):
    if x is None:
        return None
    if isinstance(x, (bool,)):
        return x
    if isinstance(x, int):
        return x
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return None
    return round(x, 4)


def summary_json(summary, deltas_df, measures=None, mdeltas=None) -> dict:
    """Flat, human-readable keys for DVC metrics (see the module docstring)."""
    out = {}
    if measures is not None:
        for r in measures[measures["scope"] == "overall"].itertuples(index=False):
            base = f"{r.model}/{r.variant}/{r.task}"
            for m in ("logprob", "needle_attention", "pause_attention"):
                out[f"{base}/mean_{m}"] = _num(getattr(r, f"mean_{m}"))
    if mdeltas is not None:
        for r in mdeltas[mdeltas["scope"] == "overall"].itertuples(index=False):
            key = f"{r.model}/{r.variant}/{r.task}/{r.metric}_diff_vs_{r.reference}"
            out[key] = _num(r.diff)
            out[f"{key}_ci_low"] = _num(r.diff_ci_low)
            out[f"{key}_ci_high"] = _num(r.diff_ci_high)
    for r in summary[summary["kind"] == "overall"].itertuples(index=False):
        base = f"{r.model}/{r.variant}/{r.task}"
        out[f"{base}/mean_score"] = _num(r.mean_score)
        out[f"{base}/mean_recall"] = _num(r.mean_recall)
        out[f"{base}/exact_rate"] = _num(r.exact_rate)
        out[f"{base}/n"] = int(r.n)
    for r in deltas_df.itertuples(index=False):
        base = f"{r.model}/{r.variant}/{r.task}"
        if r.reference == "baseline":
            out[f"{base}/pct_vs_baseline"] = _num(r.pct)
            out[f"{base}/pct_ci_low"] = _num(r.pct_ci_low)
            out[f"{base}/pct_ci_high"] = _num(r.pct_ci_high)
            out[f"{base}/diff_vs_baseline"] = _num(r.diff)
            out[f"{base}/n_matched"] = int(r.n)
        else:
            tag = f"vs_{r.reference}"
            out[f"{base}/pct_{tag}"] = _num(r.pct)
            out[f"{base}/pct_{tag}_ci_low"] = _num(r.pct_ci_low)
            out[f"{base}/pct_{tag}_ci_high"] = _num(r.pct_ci_high)
            out[f"{base}/diff_{tag}"] = _num(r.diff)
            out[f"{base}/n_matched_{tag}"] = int(r.n)
    return out


def csv_text(df) -> str:
    """A table as CSV: no index, 6 significant digits, \\n line ends (the same bytes on every platform)."""
    return df.to_csv(index=False, float_format="%.6g", lineterminator="\n")
