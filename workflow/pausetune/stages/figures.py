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

Training runs (issue #26: tuned variants carry the training seed of their adapter):
results/figures/seeds/{model}/{task}.{ext}
    the per-seed dot plot: one row per tuned contrast of core.design.COMPARISONS the cells have, x = recall
    difference (variant - reference, percentage points); a dot per training seed (its own contrast, as in
    seed_deltas.csv), the pooled mean with its 95% hierarchical bootstrap interval (runs, then points, then
    cells: deltas.csv's recall_diff_pp_ci_low/high, from the same resamples and seed: config report.bootstrap and
    seed, or --bootstrap / --bootstrap-seed as for `pausetune aggregate`) and a zero line.

results/figures/distance/{model}/{task}.{ext}
    recall against the needle's distance to the question (log axis), one line per variant over distance.csv's
    bins, D50 with its bootstrap interval on the 50% line (the same resamples and seed as distance.csv's, with
    config report.bootstrap and seed or --bootstrap / --bootstrap-seed).

Tooltips (HTML) carry length, depth, mean score, n and, on the heatmaps, the answers. What a figure draws is
core/report/figdata.py, how: core/report/charts.py; this step reads the table, builds the chart and writes its files.
"""
from __future__ import annotations

import json
from html import escape as html_escape
from pathlib import Path

from ..core.config import ReportConfig
from ..core.report.charts import build_chart
from ..core.design import KEY
from ..core.report.figdata import LAYER_PARTS, MEASURE_FIELD
from ..core.io import PausetuneError, atomic_path, cache_dir, read_parquet, write_text
from ..core.report.tables import primary_of
from ..core.report.targets import FORMATS, KINDS


SEEDS_COLUMNS = ("recall", "exact")  # recall: the contrast; exact: the per-seed exact test in the tooltips
DISTANCE_COLUMNS = ("recall", "needle_distance")


def load_table(path: str, kind: str = "heatmap"):
    """The columns a figure of `kind` reads (the mechanism's only where the table has them)."""
    if kind in ("seeds", "distance"):
        import pyarrow.parquet as pq

        have = set(pq.read_schema(path).names)
        want = SEEDS_COLUMNS if kind == "seeds" else DISTANCE_COLUMNS
        return read_parquet(path, columns=KEY + ["score"] + [c for c in want if c in have])
    if kind in MEASURE_FIELD or kind == "attention_layer":
        import pyarrow.parquet as pq

        have = set(pq.read_schema(path).names)
        want = [MEASURE_FIELD.get(kind)] if kind in MEASURE_FIELD else [f"attention.{p}" for p in LAYER_PARTS]
        return read_parquet(path, columns=KEY + ["score"] + [c for c in want if c in have])
    return read_parquet(path, columns=KEY + ["score"])


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
    parser.add_argument("--bootstrap", type=int, default=None, metavar="B",
                        help="seeds, distance: bootstrap resamples of the interval (default: config report.bootstrap)")
    parser.add_argument("--bootstrap-seed", type=int, default=None, metavar="SEED",
                        help="seeds, distance: bootstrap seed (default: config seed)")
    parser.add_argument("--output", required=True, metavar="STEM",
                        help="output path without extension; writes STEM.html, STEM.png, STEM.svg")


def main(args, config: dict) -> int:
    stem = args.output
    for ext in FORMATS:
        if stem.endswith("." + ext):
            stem = stem[: -len(ext) - 1]
    df = load_table(args.cells_table, args.kind)
    # the seeds figure's interval: the aggregate stage's resamples, seed and primary endpoint (so deltas.csv's)
    report = ReportConfig.of(config)
    b = args.bootstrap if args.bootstrap is not None else report.bootstrap
    seed = args.bootstrap_seed if args.bootstrap_seed is not None else config["seed"]
    if b < 1:
        raise PausetuneError(f"--bootstrap {b}: expected at least 1 resample")
    chart = build_chart(df, args.kind, args.model, args.task, args.variant, args.reference, b=int(b), seed=int(seed),
                        primary=primary_of(report.to_dict()))
    written = save_chart(chart, stem, config=config)
    print(f"figures: {args.kind} {args.model}/{args.task}" + (f"/{args.variant}" if args.variant else "")
          + f" -> {', '.join(str(p) for p in written)}")
    return 0