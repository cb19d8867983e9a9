"""Stage `figures`: results/tables/cells.parquet -> Altair figures, each as .html (offline, JS inlined), .png, .svg.

One call draws one figure (one Snakemake target):

results/figures/heatmap/{model}/{task}/{variant}.{ext}
    The NIAH heatmap: x = context length (tokens, ordinal, 1K 2K ...), y = needle depth (%, 0 at the top as in
    the original harness), colour = mean score over seeds on a fixed 1..10 red->yellow->green scale. Cells
    that were not evaluated are absent from the data and show as grey gaps, never as a score.
results/figures/delta/{model}/{task}/{variant}.{ext}
    variant - baseline, per (length, depth): mean over seeds of the paired score difference, on a diverging
    red (worse) / blue (better) scale with a fixed symmetric domain -9..9 centred at 0.
results/figures/delta/{model}/{task}/{variant}_vs_{reference}.{ext}
    the same against another reference (pause-tuned_vs_plain-tuned: what the pauses add to tuning).
results/figures/length/{model}/{task}.{ext}
    mean score against context length, one line per variant, band = mean +- 1.96 standard errors.
results/figures/depth/{model}/{task}.{ext}
    the depth profile (lost-in-the-middle curve): mean score against needle depth, one line per variant.


The mechanism (cells with eval.measure; cells without are left out, and a figure with none says so in its title):
results/figures/logprob/{model}/{task}/{variant}.{ext}
    the heatmap layout with colour = mean answer log-prob (the cell's `answer_logprob_mean`) over seeds, on one
    scale shared by every variant of the model x task (so maps compare).
results/figures/logprob_delta/{model}/{task}/{variant}[_vs_{reference}].{ext}
    the delta-map layout for the log-prob: mean paired difference per (length, depth), symmetric domain.
results/figures/attention_depth/{model}/{task}.{ext}
    needle attention share (layer mean) against depth, one line per variant, band mean +- 1.96 SE.
results/figures/pause_depth/{model}/{task}.{ext}
    attention mass on pause tokens against depth, paused variants.
results/figures/attention_layer/{model}/{task}.{ext}
    share per layer (needle, pause, sink), one line per variant: where in the network the pauses change anything.

Tooltips (HTML) carry length, depth, mean score, n and, on the heatmaps, the answers.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..core.design import KEY, fmt_tokens
from ..core.design import VARIANTS
from html import escape as html_escape

from ..core.io import PausetuneError, atomic_path, read_parquet, write_text
from ..core.targets import FORMATS, KINDS, MAP_KINDS

# measured cell field per mechanism figure
MEASURE_FIELD = {"logprob": "answer_logprob_mean", "logprob_delta": "answer_logprob_mean",
                 "attention_depth": "needle_attention", "pause_depth": "pause_attention"}
LAYER_PARTS = ("needle", "pause", "sink")
VARIANT_COLORS = {"baseline": "#7f7f7f", "pause-prompt": "#f58518", "pause-tuned": "#4c78a8",
                  "plain-tuned": "#54a24b"}
SCORE_DOMAIN = [1, 10]
# The original NIAH harness's colour map (red -> yellow -> green), pinned to the rubric's 1..10.
SCORE_SCALE = {"domain": [1, 5.5, 10], "range": ["#F0496E", "#EBB839", "#0CD79F"], "clamp": True}
DELTA_DOMAIN = [-9, 9]
GAP_FILL = "#e6e6e6"
DELTA_GAP_FILL = "#b8b8b8"  # darker than the near-white of a zero difference
ANSWER_CHARS = 140


# ----------------------------------------------------------------------------------------------- data


def load_table(path: str, kind: str = "heatmap"):
    """The columns a figure of `kind` reads (the mechanism's only where the table has them)."""
    if kind in MEASURE_FIELD or kind == "attention_layer":
        import pyarrow.parquet as pq

        have = set(pq.read_schema(path).names)
        want = [MEASURE_FIELD.get(kind)] if kind in MEASURE_FIELD else [f"attention.{p}" for p in LAYER_PARTS]
        return read_parquet(path, columns=KEY + ["score"] + [c for c in want if c in have])
    return read_parquet(path, columns=KEY + ["score"])


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


# ----------------------------------------------------------------------------------------------- charts


def _title(text: str, subtitle) -> dict:
    return {"text": text, "subtitle": subtitle, "anchor": "start", "fontSize": 15, "subtitleFontSize": 11,
            "subtitleColor": "#555"}


def _grid_axes(all_lengths, all_depths):
    """Ordinal x (length) and y (depth) encodings over the full grid of the model x task, so gaps stay gaps."""
    import altair as alt

    ll, dl = length_labels(all_lengths), depth_labels(all_depths)
    x_sort, y_sort = [ll[v] for v in sorted(ll)], [dl[v] for v in sorted(dl)]
    many = len(x_sort) > 12
    x = alt.X("length_label:O", sort=x_sort, scale=alt.Scale(domain=x_sort),
              axis=alt.Axis(title="context length (tokens)", labelAngle=-45 if many else 0))
    y = alt.Y("depth_label:O", sort=y_sort, scale=alt.Scale(domain=y_sort),
              axis=alt.Axis(title="needle depth (% of context)"))
    size = {"width": max(360, min(720, 40 * len(x_sort))), "height": max(240, min(560, 26 * len(y_sort)))}
    return x, y, ll, dl, size, len(x_sort) * len(y_sort) <= 225 and len(x_sort) <= 16


def heatmap_chart(df, model: str, task: str, variant: str):
    import altair as alt

    data = heatmap_data(df, model, task, variant)
    grid = select(df, model, task)
    x, y, ll, dl, size, with_text = _grid_axes(grid["length"], grid["depth"])
    data.insert(0, "length_label", data["length"].map(ll))
    data.insert(1, "depth_label", data["depth"].map(dl))
    n_missing = len(ll) * len(dl) - len(data)
    seeds = sorted(select(df, model, task, variant)["seed"].unique())
    sub = [f"colour: mean score (1-10) over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}; "
           f"{int(data['n'].sum())} cells; overall mean {select(df, model, task, variant)['score'].mean():.2f}"]
    if n_missing:
        sub.append(f"grey: {n_missing} (length, depth) point{'s' if n_missing != 1 else ''} not evaluated")
    tooltip = [alt.Tooltip("length:Q", title="length (tokens)", format=","),
               alt.Tooltip("depth:Q", title="depth (%)", format=".4~g"),
               alt.Tooltip("mean_score:Q", title="mean score", format=".2f"),
               alt.Tooltip("n:Q", title="n (cells)"), alt.Tooltip("seeds:N", title="seeds"),
               alt.Tooltip("mean_recall:Q", title="mean recall", format=".2f"),
               alt.Tooltip("answers:N", title="answer(s)")]
    base = alt.Chart(data).encode(x=x, y=y)
    rect = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        color=alt.Color("mean_score:Q", title="score", scale=alt.Scale(**SCORE_SCALE),
                        legend=alt.Legend(values=[1, 3, 5, 7, 10], gradientLength=180)),
        tooltip=tooltip)
    layers = [rect]
    if with_text:
        layers.append(base.mark_text(fontSize=11, color="#222").encode(
            text=alt.Text("mean_score:Q", format=".1f"), tooltip=tooltip))
    chart = alt.layer(*layers).properties(
        title=_title(f"NIAH: {model} · {task} · {variant}", sub), **size)
    return chart.configure_view(fill=GAP_FILL, stroke=None).configure_axis(grid=False)


def delta_chart(df, model: str, task: str, variant: str, reference: str = "baseline"):
    import altair as alt

    data, m = delta_data(df, model, task, variant, reference)
    grid = select(df, model, task)
    x, y, ll, dl, size, with_text = _grid_axes(grid["length"], grid["depth"])
    data.insert(0, "length_label", data["length"].map(ll))
    data.insert(1, "depth_label", data["depth"].map(dl))
    mv, mr = m["score_v"].mean(), m["score_r"].mean()
    pct = f" ({(mv - mr) * 100 / mr:+.1f}%)" if mr else ""
    n_missing = len(ll) * len(dl) - len(data)
    sub = [f"colour: mean over seeds of score({variant}) - score({reference}) on matched cells (same seed, length, "
           f"depth)", f"{len(m)} matched cells; mean {mv:.2f} vs {mr:.2f}: {mv - mr:+.2f} points{pct}"]
    if n_missing:
        sub.append(f"grey: {n_missing} (length, depth) point{'s' if n_missing != 1 else ''} without a matched pair")
    tooltip = [alt.Tooltip("length:Q", title="length (tokens)", format=","),
               alt.Tooltip("depth:Q", title="depth (%)", format=".4~g"),
               alt.Tooltip("mean_diff:Q", title="Δ score", format="+.2f"),
               alt.Tooltip("mean_variant:Q", title=f"mean {variant}", format=".2f"),
               alt.Tooltip("mean_reference:Q", title=f"mean {reference}", format=".2f"),
               alt.Tooltip("n:Q", title="n (matched cells)"), alt.Tooltip("seeds:N", title="seeds")]
    if "answers_variant" in data:
        tooltip += [alt.Tooltip("answers_variant:N", title=f"{variant} answer(s)"),
                    alt.Tooltip("answers_reference:N", title=f"{reference} answer(s)")]
    base = alt.Chart(data).encode(x=x, y=y)
    rect = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        color=alt.Color("mean_diff:Q", title="Δ score",
                        scale=alt.Scale(scheme="redblue", domain=DELTA_DOMAIN, domainMid=0, clamp=True),
                        legend=alt.Legend(values=[-9, -6, -3, 0, 3, 6, 9], gradientLength=180)),
        tooltip=tooltip)
    layers = [rect]
    if with_text:
        layers.append(base.transform_calculate(
            label="abs(datum.mean_diff) < 0.05 ? '0' : format(datum.mean_diff, '+.1f')"
        ).mark_text(fontSize=11).encode(
            text=alt.Text("label:N"), tooltip=tooltip,
            color=alt.condition("abs(datum.mean_diff) > 5", alt.value("white"), alt.value("#222"))))
    chart = alt.layer(*layers).properties(title=_title(f"Δ NIAH: {model} · {task} · {variant} − {reference}", sub),
                                          **size)
    return chart.configure_view(fill=DELTA_GAP_FILL, stroke=None).configure_axis(grid=False)


def profile_chart(df, model: str, task: str, by: str):
    import altair as alt

    if by not in ("length", "depth"):
        raise PausetuneError(f"profile by {by}: expected length or depth")
    data = profile_data(df, model, task, by)
    variants = [v for v in VARIANTS if v in set(data["variant"])] + sorted(set(data["variant"]) - set(VARIANTS))
    colors = [VARIANT_COLORS.get(v, "#000000") for v in variants]
    xs = sorted(data[by].unique())
    if by == "length":
        log = len(xs) > 1 and xs[-1] / xs[0] >= 4
        scale = alt.Scale(type="log", base=2, nice=False) if log else alt.Scale(zero=False, nice=False,
                                                                                  padding=12)
        axis = alt.Axis(title="context length (tokens)", values=xs if len(xs) <= 16 else alt.Undefined,
                        labelExpr="datum.value >= 1000 ? format(datum.value / 1000, '.3~g') + 'K' "
                                  ": format(datum.value, 'd')", grid=True)
        title = f"{model} · {task}: mean score vs context length"
        over = "depths"
        x_tip = alt.Tooltip(f"{by}:Q", title="length (tokens)", format=",")
    else:
        scale = alt.Scale(domain=[0, 100], nice=False)
        axis = alt.Axis(title="needle depth (% of context)", values=xs if len(xs) <= 11 else alt.Undefined,
                        labelExpr="datum.value + '%'", grid=True)
        title = f"{model} · {task}: depth profile (mean score vs needle depth)"
        over = "lengths"
        x_tip = alt.Tooltip(f"{by}:Q", title="depth (%)", format=".4~g")
    n_seeds = int(select(df, model, task)["seed"].nunique())
    sub = [f"all variants; mean over {over} and {n_seeds} seed{'s' if n_seeds != 1 else ''}; "
           f"band: mean ± 1.96 SE (cells treated as independent)"]
    x = alt.X(f"{by}:Q", scale=scale, axis=axis)
    color = alt.Color("variant:N", scale=alt.Scale(domain=variants, range=colors),
                      legend=alt.Legend(title="variant", orient="right", symbolOpacity=1, symbolType="stroke",
                                        symbolStrokeWidth=3))
    y = alt.Y("mean_score:Q", scale=alt.Scale(domain=SCORE_DOMAIN, nice=False),
              axis=alt.Axis(title="mean score (1-10)", values=list(range(1, 11))))
    tooltip = [alt.Tooltip("variant:N"), x_tip,
               alt.Tooltip("mean_score:Q", title="mean score", format=".2f"),
               alt.Tooltip("n:Q", title="n (cells)"),
               alt.Tooltip("lo:Q", title="95% low", format=".2f"), alt.Tooltip("hi:Q", title="95% high", format=".2f")]
    base = alt.Chart(data).encode(x=x, color=color)
    band = base.transform_filter("isValid(datum.lo)").mark_area(opacity=0.1).encode(
        y=alt.Y("lo:Q", scale=alt.Scale(domain=SCORE_DOMAIN, nice=False),
                axis=alt.Axis(title="mean score (1-10)", values=list(range(1, 11)))), y2="hi:Q")
    lines = base.mark_line(point=alt.OverlayMarkDef(size=45, filled=True), strokeWidth=2).encode(
        y=y, tooltip=tooltip)
    chart = alt.layer(band, lines).properties(title=_title(title, sub), width=480, height=300)
    return chart.configure_axis(gridColor="#eee")


# ----------------------------------------------------------------------------------------------- mechanism


def measured(df, model: str, task: str, col: str, variant: str | None = None):
    """Cells of model x task (x variant) that carry the measure `col` (no error when none do: see _empty)."""
    sel = select(df, model, task, variant)
    if col not in sel:
        return sel.iloc[0:0].assign(**{col: math.nan})
    return sel[sel[col].notna()]


def _empty(title: str, what: str):
    """A figure for a grid without the measure: says so instead of failing (cells without measures are valid)."""
    import altair as alt
    import pandas as pd

    text = f"no cells carry {what} (eval.measure off, or cells made before it)"
    return alt.Chart(pd.DataFrame({"t": [text]})).mark_text(fontSize=13).encode(text="t:N").properties(
        title=_title(title, [text]), width=480, height=80)


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


def logprob_map_chart(df, model: str, task: str, variant: str, reference: str | None = None):
    import altair as alt

    what = "answer log-prob" if reference is None else f"Δ answer log-prob: {variant} − {reference}"
    title = f"{what}: {model} · {task}" + (f" · {variant}" if reference is None else "")
    data = logprob_map_data(df, model, task, variant, reference)
    if data.empty:
        return _empty(title, "the answer log-prob" + ("" if reference is None else " in both variants"))
    grid = select(df, model, task)
    x, y, ll, dl, size, with_text = _grid_axes(grid["length"], grid["depth"])
    data.insert(0, "length_label", data["length"].map(ll))
    data.insert(1, "depth_label", data["depth"].map(dl))
    col = MEASURE_FIELD["logprob"]
    if reference is None:
        allv = measured(df, model, task, col)[col]
        lo, hi = float(allv.min()), float(allv.max())
        scale = alt.Scale(scheme="viridis", domain=[lo, hi if hi > lo else lo + 1])
        sub = [f"colour: mean over seeds of the summed teacher-forced log-prob of the expected answer(s) (higher: "
               f"the model finds the needle's answer likelier); one scale for every variant of {model} · {task}",
               f"{int(data['n'].sum())} cells; overall mean {data['value'].mean():.2f}"]
        fmt = ".1f"
    else:
        span = max(1.0, float(data["value"].abs().max()))
        scale = alt.Scale(scheme="redblue", domain=[-span, span], domainMid=0)
        sub = [f"colour: mean over seeds of log-prob({variant}) − log-prob({reference}) on matched cells (blue: "
               f"{variant} finds the answer likelier)", f"{int(data['n'].sum())} matched cells; mean "
               f"{data['value'].mean():+.2f} nats"]
        fmt = "+.1f"
    tooltip = [alt.Tooltip("length:Q", title="length (tokens)", format=","),
               alt.Tooltip("depth:Q", title="depth (%)", format=".4~g"),
               alt.Tooltip("value:Q", title="log-prob" if reference is None else "Δ log-prob", format=".3f"),
               alt.Tooltip("n:Q", title="n (cells)"), alt.Tooltip("seeds:N", title="seeds")]
    base = alt.Chart(data).encode(x=x, y=y)
    layers = [base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        color=alt.Color("value:Q", title="log-prob" if reference is None else "Δ log-prob", scale=scale),
        tooltip=tooltip)]
    if with_text:
        layers.append(base.mark_text(fontSize=10, color="#222").encode(text=alt.Text("value:Q", format=fmt),
                                                                        tooltip=tooltip))
    fill = GAP_FILL if reference is None else DELTA_GAP_FILL
    return alt.layer(*layers).properties(title=_title(title, sub), **size).configure_view(
        fill=fill, stroke=None).configure_axis(grid=False)


def attention_depth_data(df, model: str, task: str, col: str, paused_only: bool = False):
    """Per variant x depth: mean of the measure `col` over lengths and seeds, n, 95% band (mean +- 1.96 SE)."""
    import numpy as np
    import pandas as pd

    from ..core.design import PAUSED

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
    import json

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


def _variant_color(variants):
    import altair as alt

    order = [v for v in VARIANTS if v in set(variants)] + sorted(set(variants) - set(VARIANTS))
    return alt.Color("variant:N", scale=alt.Scale(domain=order, range=[VARIANT_COLORS.get(v, "#000") for v in order]),
                     legend=alt.Legend(title="variant", orient="right", symbolType="stroke", symbolStrokeWidth=3))


def attention_depth_chart(df, model: str, task: str, kind: str):
    import altair as alt

    pause = kind == "pause_depth"
    what = "attention mass on pause tokens" if pause else "needle attention share"
    title = f"{model} · {task}: {what} vs needle depth"
    data = attention_depth_data(df, model, task, MEASURE_FIELD[kind], paused_only=pause)
    if data.empty:
        return _empty(title, "attention measures" + (" in a paused variant" if pause else ""))
    sub = [f"last prompt token's attention, mean over layers and heads; mean over lengths and seeds; band: mean ± "
           f"1.96 SE" + ("" if pause else "; a dip in the middle is the lost-in-the-middle mechanism")]
    x = alt.X("depth:Q", scale=alt.Scale(domain=[0, 100], nice=False),
              axis=alt.Axis(title="needle depth (% of context)", labelExpr="datum.value + '%'"))
    y = alt.Y("mean:Q", axis=alt.Axis(title=f"{what} (0-1)", format=".3~f"), scale=alt.Scale(zero=True))
    tooltip = [alt.Tooltip("variant:N"), alt.Tooltip("depth:Q", format=".4~g"),
               alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("n:Q"), alt.Tooltip("lo:Q", format=".4f"),
               alt.Tooltip("hi:Q", format=".4f")]
    base = alt.Chart(data).encode(x=x, color=_variant_color(data["variant"]))
    band = base.transform_filter("isValid(datum.lo)").mark_area(opacity=0.12).encode(y="lo:Q", y2="hi:Q")
    lines = base.mark_line(point=alt.OverlayMarkDef(size=40, filled=True), strokeWidth=2).encode(y=y, tooltip=tooltip)
    return alt.layer(band, lines).properties(title=_title(title, sub), width=480, height=300).configure_axis(
        gridColor="#eee")


def attention_layer_chart(df, model: str, task: str):
    import altair as alt

    title = f"{model} · {task}: attention share per layer"
    data = attention_layer_data(df, model, task)
    if data.empty:
        return _empty(title, "attention measures")
    sub = ["last prompt token's attention per layer, mean over heads and cells: on the needle, on pause tokens, "
           "on the first 4 tokens (sink)"]
    chart = alt.Chart(data).mark_line(point=True, strokeWidth=2).encode(
        x=alt.X("layer:O", axis=alt.Axis(title="layer", labelAngle=0)),
        y=alt.Y("share:Q", axis=alt.Axis(title="share of attention (0-1)", format=".3~f")),
        color=_variant_color(data["variant"]),
        tooltip=[alt.Tooltip("variant:N"), alt.Tooltip("part:N"), alt.Tooltip("layer:Q"),
                 alt.Tooltip("share:Q", format=".4f"), alt.Tooltip("n:Q", title="n (cells)")],
    ).properties(width=260, height=220).facet(
        column=alt.Column("part:N", sort=list(LAYER_PARTS), title=None)).resolve_scale(y="independent")
    return chart.properties(title=_title(title, sub)).configure_axis(gridColor="#eee")


def build_chart(df, kind: str, model: str, task: str, variant: str | None = None, reference: str = "baseline"):
    if kind in MAP_KINDS and not variant:
        raise PausetuneError(f"--kind {kind} needs --variant")
    if kind == "logprob":
        return logprob_map_chart(df, model, task, variant)
    if kind == "logprob_delta":
        if variant == reference:
            raise PausetuneError(f"--kind logprob_delta: --variant and --reference are both {variant}")
        return logprob_map_chart(df, model, task, variant, reference)
    if kind in ("attention_depth", "pause_depth"):
        return attention_depth_chart(df, model, task, kind)
    if kind == "attention_layer":
        return attention_layer_chart(df, model, task)
    if kind == "heatmap":
        return heatmap_chart(df, model, task, variant)
    if kind == "delta":
        if variant == reference:
            raise PausetuneError(f"--kind delta: --variant and --reference are both {variant}")
        return delta_chart(df, model, task, variant, reference)
    if kind in ("length", "depth"):
        return profile_chart(df, model, task, kind)
    raise PausetuneError(f"--kind {kind}: expected one of {KINDS}")


HTML_TEMPLATE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>body {{ font-family: sans-serif; margin: 16px; }} .vega-embed {{ width: 100%; }}</style>
<script type="text/javascript">{bundle}</script>
</head>
<body>
<div id="vis"></div>
<script type="text/javascript">
vegaEmbed("#vis", {spec}, {{"renderer": "svg", "actions": {{"export": true, "source": true, "compiled": false, "editor": false}}}})
  .catch(function (err) {{ document.getElementById("vis").innerText = String(err); }});
</script>
</body>
</html>
"""


def _vl_version() -> str:
    import altair as alt

    return ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


def js_bundle(config: dict | None = None) -> str:
    """The Vega / Vega-Lite / vega-embed JavaScript, inlined so the HTML works offline.

    vl-convert builds the bundle in ~4 s per process; it is the same bytes for one vl-convert and Vega-Lite
    version, so it is cached in the pausetune cache folder (config cache_dir, $PAUSETUNE_CACHE, ~/.cache/pausetune).
    """
    import vl_convert as vlc

    from ..core.io import cache_dir

    vl = _vl_version()
    path = cache_dir(config) / "vl-convert" / f"bundle-{vlc.__version__}-vl{vl}.js"
    try:
        js = path.read_text(encoding="utf-8")
        if len(js) > 100_000:
            return js
    except OSError:
        pass
    js = vlc.javascript_bundle(vl_version=vl)
    try:
        write_text(path, js)
    except OSError:
        pass  # a read-only cache only costs time
    return js


def chart_html(chart, config: dict | None = None) -> str:
    import json

    spec = chart.to_dict()
    title = spec.get("title", {})
    title = title.get("text", "") if isinstance(title, dict) else str(title)
    spec_json = json.dumps(spec, ensure_ascii=False).replace("</", "<\\/")  # no "</script>" inside the script
    return HTML_TEMPLATE.format(title=html_escape(title), bundle=js_bundle(config).replace("</script", "<\\/script"),
                                spec=spec_json)


def save_chart(chart, stem: str | Path, formats=FORMATS, scale: float = 2.0, config: dict | None = None) -> list[Path]:
    """Write stem.html (offline: the Vega JS inlined), stem.png (scale x) and stem.svg, each atomically."""
    import vl_convert as vlc

    stem = Path(stem)
    spec = chart.to_dict()
    vl = _vl_version()
    written = []
    for fmt in formats:
        path = stem.with_name(stem.name + f".{fmt}")
        if fmt == "html":
            write_text(path, chart_html(chart, config))
        elif fmt == "png":
            with atomic_path(path, suffix=".png") as tmp:
                tmp.write_bytes(vlc.vegalite_to_png(spec, scale=scale, vl_version=vl))
        elif fmt == "svg":
            write_text(path, vlc.vegalite_to_svg(spec, vl_version=vl))
        else:
            raise PausetuneError(f"figure format {fmt}: expected one of {FORMATS}")
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------- CLI


def add_arguments(parser) -> None:
    parser.add_argument("--cells-table", required=True, metavar="PARQUET", help="results/tables/cells.parquet")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--variant", default=None, help="heatmap / delta / logprob / logprob_delta: the variant drawn")
    parser.add_argument("--reference", default="baseline", help="delta: the variant subtracted (default baseline)")
    parser.add_argument("--output", required=True, metavar="STEM",
                        help="output path without extension; writes STEM.html, STEM.png, STEM.svg")


def main(args, config: dict) -> int:
    stem = args.output
    for ext in FORMATS:
        if stem.endswith("." + ext):
            stem = stem[: -len(ext) - 1]
    df = load_table(args.cells_table, args.kind)
    chart = build_chart(df, args.kind, args.model, args.task, args.variant, args.reference)
    written = save_chart(chart, stem, config=config)
    print(f"figures: {args.kind} {args.model}/{args.task}" + (f"/{args.variant}" if args.variant else "")
          + f" -> {', '.join(str(p) for p in written)}")
    return 0
