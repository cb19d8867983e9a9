"""The figures as Altair charts (Vega-Lite specs): scales, axes, titles and tooltips, one function per family.

build_chart picks the family of a `--kind`; the data each chart draws comes from core.report.figdata. Fixed scales
(score 1..10, delta -9..9) make figures of different grids compare at a glance.
"""
from __future__ import annotations

from ..design import UNTRAINED, VARIANTS
from .figdata import (LAYER_PARTS, MEASURE_FIELD, attention_depth_data, attention_layer_data, delta_data,
                      depth_labels, distance_data, heatmap_data, length_labels, logprob_map_data, measured, profile_data, seeds_data,
                      select)
from ..io import PausetuneError
from .stats import DEFAULT_BOOTSTRAP
from .targets import KINDS, MAP_KINDS

# the crossed variants in lighter shades of the weights they load (pause: blue, plain: green)
VARIANT_COLORS = {"baseline": "#7f7f7f", "pause-prompt": "#f58518", "pause-tuned": "#4c78a8",
                  "plain-tuned": "#54a24b", "pause-tuned-on-plain": "#9ecae9", "plain-tuned-on-paused": "#88d27a",
                  "pause-before-answer": "#b279a2", "ms-poe": "#e45756"}
SCORE_DOMAIN = [1, 10]
# The original NIAH harness's colour map (red -> yellow -> green), pinned to the rubric's 1..10.
SCORE_SCALE = {"domain": [1, 5.5, 10], "range": ["#F0496E", "#EBB839", "#0CD79F"], "clamp": True}
DELTA_DOMAIN = [-9, 9]
GAP_FILL = "#e6e6e6"
DELTA_GAP_FILL = "#b8b8b8"  # darker than the near-white of a zero difference


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


def _note(title: str, text: str):
    """A figure that only says why it has nothing to draw."""
    import altair as alt
    import pandas as pd

    return alt.Chart(pd.DataFrame({"t": [text]})).mark_text(fontSize=13).encode(text="t:N").properties(
        title=_title(title, [text]), width=480, height=80)


def _empty(title: str, what: str):
    """A figure for a grid without the measure: says so instead of failing (cells without measures are valid)."""
    return _note(title, f"no cells carry {what} (eval.measure off, or cells made before it)")


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


def seeds_chart(df, model: str, task: str, b: int = DEFAULT_BOOTSTRAP, seed: int = 0, primary: dict | None = None):
    """The per-seed dot plot: one row per tuned contrast, x = recall difference (percentage points); a dot per
    training seed (that run's own contrast), the pooled mean (black) with its hierarchical 95% interval, a zero
    line."""
    import math

    import altair as alt

    title = f"{model} · {task}: recall difference per training seed"
    dots, pooled = seeds_data(df, model, task, b, seed, primary)
    if pooled.empty:
        return _note(title, "no tuned contrast has matched cells with recall (a tuned variant and its reference "
                            "both evaluated)")
    seeds = sorted(dots["train_seed"].unique())
    n_seeds = len(seeds)
    lo, hi = int(dots["n"].min()), int(dots["n"].max())
    cells = f"{lo}" if lo == hi else f"{lo}-{hi}"
    named = ", ".join(str(s) for s in seeds) if n_seeds <= 8 else f"{seeds[0]}..{seeds[-1]}"
    if seeds == [UNTRAINED]:  # tuned cells made before training seeds were recorded
        named = "not recorded in the cells"
    how = ("black: pooled mean with its 95% hierarchical bootstrap interval, resampling runs (training seeds), then "
           f"(length, depth) points, then cells; B = {b}, seed {seed}, as deltas.csv")
    if n_seeds > 1:
        runs = f"{n_seeds} training seeds ({named}); {cells} matched cells per seed and contrast"
    else:
        runs = (f"a single training seed ({named}): one dot per contrast, {cells} matched cells each; the interval "
                f"then varies points and cells only (no run-to-run variance in it)")
    sub = ["dots: each training seed's own contrast, mean recall difference (variant − reference) over its matched "
           "cells, in percentage points", runs, how]
    order = list(pooled["contrast"])
    ends = [abs(x) for x in list(dots["recall_diff_pp"]) + list(pooled["recall_diff_pp_ci_low"])
            + list(pooled["recall_diff_pp_ci_high"]) if not math.isnan(x)]
    span = min(100.0, max(5.0, 5 * math.ceil(max(ends, default=0) * 1.1 / 5)))
    x_scale = alt.Scale(domain=[-span, span], nice=False)
    x_axis = alt.Axis(title="recall difference (percentage points, variant − reference)", grid=True)
    y = alt.Y("contrast:N", sort=order, scale=alt.Scale(domain=order),
              axis=alt.Axis(title=None, labelLimit=320))
    colors = [c for c in VARIANTS if c in set(dots["variant"])] + sorted(set(dots["variant"]) - set(VARIANTS))
    color = alt.Color("variant:N", scale=alt.Scale(domain=colors, range=[VARIANT_COLORS.get(v, "#000")
                                                                           for v in colors]),
                      legend=alt.Legend(title="seed dots: variant", orient="right"))
    seed_tip = [alt.Tooltip("contrast:N"), alt.Tooltip("train_seed:Q", title="training seed"),
                alt.Tooltip("recall_diff_pp:Q", title="Δ recall (pp)", format="+.1f"),
                alt.Tooltip("recall_variant_pp:Q", title="recall variant (%)", format=".1f"),
                alt.Tooltip("recall_reference_pp:Q", title="recall reference (%)", format=".1f"),
                alt.Tooltip("n:Q", title="n (matched cells)"),
                alt.Tooltip("exact_wins:Q", title="exact wins"), alt.Tooltip("exact_losses:Q", title="exact losses"),
                alt.Tooltip("p_exact:Q", title="p (exact McNemar)", format=".3g")]
    pool_tip = [alt.Tooltip("contrast:N"), alt.Tooltip("recall_diff_pp:Q", title="pooled Δ recall (pp)",
                                                       format="+.2f"),
                alt.Tooltip("recall_diff_pp_ci_low:Q", title="95% low (hierarchical)", format="+.2f"),
                alt.Tooltip("recall_diff_pp_ci_high:Q", title="95% high (hierarchical)", format="+.2f"),
                alt.Tooltip("recall_diff_pp_cell_ci_low:Q", title="95% low (cells only)", format="+.2f"),
                alt.Tooltip("recall_diff_pp_cell_ci_high:Q", title="95% high (cells only)", format="+.2f"),
                alt.Tooltip("runs:Q", title="training seeds"), alt.Tooltip("points:Q", title="(length, depth) points"),
                alt.Tooltip("n:Q", title="n (matched cells)"),
                alt.Tooltip("sigma_runs_pp:Q", title="SD between seeds (pp)", format=".2f")]
    x = alt.X("recall_diff_pp:Q", scale=x_scale, axis=x_axis)
    zero = alt.Chart(pooled.iloc[:1].assign(zero=0.0)).mark_rule(color="#444", strokeDash=[4, 3]).encode(
        x=alt.X("zero:Q", scale=x_scale, axis=x_axis))
    interval = alt.Chart(pooled).mark_rule(color="black", strokeWidth=2.5).encode(
        x=alt.X("recall_diff_pp_ci_low:Q", scale=x_scale, axis=x_axis), x2="recall_diff_pp_ci_high:Q", y=y,
        tooltip=pool_tip)
    mean = alt.Chart(pooled).mark_point(shape="diamond", filled=True, color="black", size=110).encode(
        x=x, y=y, tooltip=pool_tip)
    # the seeds' dots just above their row's pooled interval, so neither hides the other
    points = alt.Chart(dots).mark_circle(size=70, opacity=0.8, stroke="white", strokeWidth=0.8, yOffset=-8).encode(
        x=x, y=y, color=color, tooltip=seed_tip)
    chart = alt.layer(zero, interval, mean, points).properties(
        title=_title(title, sub), width=480, height=max(120, 44 * len(order)))
    return chart.configure_axis(gridColor="#eee")


def distance_chart(df, model: str, task: str, b: int = DEFAULT_BOOTSTRAP, seed: int = 0):
    """Recall against the needle's distance to the question (log axis), one line per variant over distance.csv's
    bins; D50 (the logistic fit's 50% crossing) as a diamond on the 50% line with its bootstrap interval."""
    import math

    import altair as alt

    title = f"{model} · {task}: recall vs the needle's distance to the question"
    bins, d50 = distance_data(df, model, task, b, seed)
    if bins.empty:
        return _empty(title, "needle_distance")
    variants = [v for v in VARIANTS if v in set(bins["variant"])] + sorted(set(bins["variant"]) - set(VARIANTS))
    color = alt.Color("variant:N", scale=alt.Scale(domain=variants, range=[VARIANT_COLORS.get(v, "#000")
                                                                            for v in variants]),
                      legend=alt.Legend(title="variant", orient="right"))
    top = float(bins["bin_hi"].max())
    x_scale = alt.Scale(type="log", base=2, domain=[float(bins["x"].min()) / 1.5, top], nice=False)
    x_axis = alt.Axis(title="needle end to question start (tokens, log scale)", grid=True,
                      labelExpr="datum.value >= 1000 ? format(datum.value / 1000, '.3~g') + 'K' "
                                ": format(datum.value, 'd')")
    y_scale = alt.Scale(domain=[0, 100], nice=False)
    y = alt.Y("recall_pp:Q", scale=y_scale, axis=alt.Axis(title="mean recall (%)"))
    texts = []
    for r in d50.itertuples(index=False):
        if r.status == "crosses":
            texts.append(f"{r.variant}: D50 {r.d50:,.0f} [{r.d50_ci_low:,.0f}, "
                         f"{'beyond' if math.isinf(r.d50_ci_high) else format(r.d50_ci_high, ',.0f')}]")
        else:
            texts.append(f"{r.variant}: no D50 ({r.status})")
    runs = int(d50["runs"].max()) if not d50.empty else 0
    sub = ["bins [0, 512) then doubling; points: mean recall of the cells in the bin",
           f"D50: where a logistic fit of recall on log2(1 + distance) crosses 50%; 95% bootstrap over training runs "
           f"({runs} at most), then cells; B = {b}, seed {seed}, as distance.csv", "; ".join(texts)]
    bin_tip = [alt.Tooltip("variant:N"), alt.Tooltip("bin_lo:Q", title="from (tokens)", format=","),
               alt.Tooltip("bin_hi:Q", title="to (tokens)", format=","),
               alt.Tooltip("recall_pp:Q", title="recall (%)", format=".1f"), alt.Tooltip("n:Q", title="n (cells)"),
               alt.Tooltip("runs:Q", title="training runs")]
    lines = alt.Chart(bins).mark_line(point=alt.OverlayMarkDef(size=45, filled=True), strokeWidth=2).encode(
        x=alt.X("x:Q", scale=x_scale, axis=x_axis), y=y, color=color, tooltip=bin_tip)
    half = alt.Chart(bins.iloc[:1].assign(half=50.0)).mark_rule(color="#444", strokeDash=[4, 3]).encode(
        y=alt.Y("half:Q", scale=y_scale))
    layers = [half, lines]
    cross = d50[d50["status"] == "crosses"].copy()
    if not cross.empty:
        cross["lo"] = cross["d50_ci_low"].clip(lower=float(bins["x"].min()) / 1.5)
        cross["hi"] = cross["d50_ci_high"].clip(upper=top)
        cross["y"] = 50.0
        tip = [alt.Tooltip("variant:N"), alt.Tooltip("d50:Q", title="D50 (tokens)", format=",.0f"),
               alt.Tooltip("d50_ci_low:Q", title="95% low", format=",.0f"),
               alt.Tooltip("d50_ci_high:Q", title="95% high", format=",.0f"),
               alt.Tooltip("slope:Q", title="slope per doubling", format=".2f"), alt.Tooltip("n:Q", title="n (cells)")]
        layers.append(alt.Chart(cross).mark_rule(strokeWidth=2.5, opacity=0.7).encode(
            x=alt.X("lo:Q", scale=x_scale, axis=x_axis), x2="hi:Q", y=alt.Y("y:Q", scale=y_scale), color=color,
            tooltip=tip))
        layers.append(alt.Chart(cross).mark_point(shape="diamond", filled=True, size=110, stroke="black").encode(
            x=alt.X("d50:Q", scale=x_scale, axis=x_axis), y=alt.Y("y:Q", scale=y_scale), color=color, tooltip=tip))
    chart = alt.layer(*layers).properties(title=_title(title, sub), width=480, height=300)
    return chart.configure_axis(gridColor="#eee")


def build_chart(df, kind: str, model: str, task: str, variant: str | None = None, reference: str = "baseline",
                b: int = DEFAULT_BOOTSTRAP, seed: int = 0, primary: dict | None = None):
    """The chart of one `--kind`; b and seed (the bootstrap's resamples and seed) only for `seeds` and `distance`,
    primary (the primary endpoint) only for `seeds`: their intervals are deltas.csv's / distance.csv's when these are
    the aggregate stage's."""
    if kind == "seeds":
        return seeds_chart(df, model, task, b, seed, primary)
    if kind == "distance":
        return distance_chart(df, model, task, b, seed)
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
