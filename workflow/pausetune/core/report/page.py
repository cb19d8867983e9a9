"""The results page's text: numbers as words, the fixed rules that read an interval, and each section.

Every sentence is made from the tables by a rule (an interval that contains 0 is "no detectable effect"), so the
page says nothing the data does not; the publish stage puts the sections together and copies the files they link.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from ..config import EvalConfig, PromptConfig, PublishConfig
from ..design import VARIANTS, fmt_tokens
from ..io import PausetuneError, read_json, read_parquet
from .tables import variant_rank
from .targets import KINDS

PAPER = {"3B": 10.61, "8B": 3.57}  # the paper's single-needle average improvement over baseline, in %


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        raise PausetuneError(f"{path}: file not found (run the aggregate stage first)")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def num(x, digits: int = 2) -> str:
    if x in (None, "", "nan", "NaN"):
        return "–"
    return f"{float(x):.{digits}f}"


def signed(x, digits: int = 1) -> str:
    if x in (None, "", "nan", "NaN"):
        return "–"
    return f"{float(x):+.{digits}f}"


def interval(row: dict, key: str = "pct", digits: int = 1) -> str:
    return f"{signed(row[key], digits)} [{signed(row[key + '_ci_low'], digits)}, {signed(row[key + '_ci_high'], digits)}]"


def pvalue(x) -> str:
    if x in (None, "", "nan", "NaN"):
        return "–"
    p = float(x)
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def runs_text(row: dict) -> str:
    runs = int(float(row.get("runs") or 1))
    return f"{runs} training run{'s' if runs != 1 else ''}"


def verdict(row: dict, what: str) -> str:
    """One sentence from a paired comparison, on recall in percentage points: the interval that resamples training
    runs, then (length, depth) points, then cells decides, not the point estimate; the exact test beside it, and what
    this design could have detected where it finds nothing."""
    lo, hi = float(row["recall_diff_pp_ci_low"]), float(row["recall_diff_pp_ci_high"])
    head = (f"{what}: {interval(row, 'recall_diff_pp')} pp recall ({num(row['recall_variant_pp'], 1)}% vs "
            f"{num(row['recall_reference_pp'], 1)}%, n = {row['n']} matched cells, {runs_text(row)}; score "
            f"{signed(row['pct'])}%); exact test {row['exact_wins']} wins vs {row['exact_losses']} losses, "
            f"p = {pvalue(row['p_exact'])}" + (f" (Holm {pvalue(row['p_holm'])})" if not is_true(row.get("primary"))
                                               else ""))
    degenerate = (" Every discordant pair went one way, so the bootstrap interval ends at exactly 0 by "
                  "construction: read the exact test." if is_true(row.get("bootstrap_degenerate")) else "")
    if lo > 0:
        return head + " — an improvement whose 95% interval excludes zero." + degenerate
    if hi < 0:
        return head + " — a degradation whose 95% interval excludes zero." + degenerate
    return head + " — no detectable effect: the interval contains zero." + degenerate + mde_text(row)


def is_true(x) -> bool:
    return str(x).strip().lower() in ("true", "1")


def mde_text(row: dict) -> str:
    """What this design could detect (core.report.stats.minimum_detectable_effect, from the measured variance
    components); with one training run the run-to-run part is unmeasured, so it is a lower bound."""
    if row.get("mde_pp") in (None, "", "nan", "NaN"):
        return ""
    one = int(float(row.get("runs") or 1)) < 2
    return (f" This design detects differences of about ±{num(row['mde_pp'], 1)} pp (80% power, α = 0.05, from the "
            f"variance between {'points and cells' if one else 'runs, points and cells'} measured here)"
            + ("; with one training run the run-to-run variance is not measured, so the true figure is larger."
               if one else "."))


def band_changes(summary: list[dict], model: str, task: str, variant: str, kind: str, min_diff: float) -> list[str]:
    rows = {(r["variant"], r["band"]): r for r in summary
            if r["kind"] == kind and r["model"] == model and r["task"] == task}
    out = []
    for (v, band), r in rows.items():
        base = rows.get(("baseline", band))
        if v != variant or base is None:
            continue
        diff = float(r["mean_score"]) - float(base["mean_score"])
        if abs(diff) >= min_diff:
            out.append(f"{band} ({signed(diff)} points, {num(r['mean_score'])} vs {num(base['mean_score'])}, "
                       f"n = {r['n']}/{base['n']})")
    return out


def figure_rel(f: str) -> Path:
    """results/figures/heatmap/M/T/V.png -> heatmap/M/T/V.png (the last four parts if no `figures` folder)."""
    src = Path(f)
    return Path(*(src.parts[src.parts.index("figures") + 1:] if "figures" in src.parts[:-1] else src.parts[-4:]))


def figure_order(figures: list[str], config: dict) -> list[str]:
    """Per model and task (in config order): heatmaps, deltas, profiles, variants in design order. Snakemake passes
    the grid's list, DVC a glob: the page must not depend on which."""
    ev = EvalConfig.of(config)
    models, tasks = list(ev.models), list(ev.tasks)
    names = list(VARIANTS) + ["pause-tuned_vs_plain-tuned"]

    def rank(seq, x):
        return (seq.index(x), "") if x in seq else (len(seq), x)

    def key(f):
        p = figure_rel(f).with_suffix("").parts
        kind, model, task, name = (list(p) + ["", "", "", ""])[:4]
        return (rank(models, model), rank(tasks, task), rank(KINDS, kind), rank(names, name), p)

    return sorted(figures, key=key)


def where_baseline_fails(tables: Path, model: str, task: str) -> str | None:
    """The lost-in-the-middle region: (length, depth) points where the baseline misses in some seed, and every
    variant's mean score there. Selected on the baseline's misses, so it favours any other variant (regression
    to the mean); the page says so."""
    path = tables / "cells.parquet"
    if not path.exists():
        return None
    df = read_parquet(path, columns=["model", "task", "variant", "seed", "length", "depth", "score"])
    df = df[(df["model"] == model) & (df["task"] == task) & df["score"].notna()]
    base = df[df["variant"] == "baseline"].groupby(["length", "depth"])["score"].min()
    hard = base[base < 10].index
    if len(hard) == 0 or len(hard) == len(base):
        return None
    pts = df.set_index(["length", "depth"]).loc[lambda d: d.index.isin(hard)].reset_index()
    means = pts.groupby("variant")["score"].agg(["mean", "size"])
    order = [v for v in VARIANTS if v in means.index]
    by_len: dict[int, list[str]] = defaultdict(list)
    for n, d in sorted(hard):
        by_len[int(n)].append(f"{float(d):g}")
    where = "; ".join(f"{n} tokens: depths {', '.join(ds)}" for n, ds in sorted(by_len.items()))
    vals = ", ".join(f"{v} {num(means.loc[v, 'mean'])} (n = {int(means.loc[v, 'size'])})" for v in order)
    return (f"- Where the baseline misses the needle in at least one seed ({len(hard)} of {len(base)} length x depth "
            f"points; {where}), mean score: {vals}. These points are chosen by the baseline's misses, so this "
            "comparison leans toward the other variants; the paired intervals above are the unbiased test.")


ANSWER_KINDS = ("answered", "copies the prompt", "runs to the token limit", "other miss")


def _words(text: str) -> list[str]:
    """Lowercase word tokens (the report env has no torch, so nothing from core.evaluation.scoring's closure)."""
    import re

    return re.findall(r"\w+", (text or "").lower())


def answer_kind(answer: str, recall: float, answer_tokens: int, max_new_tokens: int, prompt_text: str) -> str:
    """How an answer went, for the failure-mode count: `answered` (some fact found); else `copies the prompt`
    (it repeats 4 consecutive words of the system line or the instruction: the tuned-on-raw-text failure; the
    question is left out, since restating it is how a normal answer starts);
    else `runs to the token limit` (no fact and no end of turn within eval.max_new_tokens: an essay-like
    continuation); else `other miss` (a short wrong answer)."""
    if recall and recall > 0:
        return "answered"
    words, ref = _words(answer), _words(prompt_text)
    grams = {tuple(ref[i:i + 4]) for i in range(len(ref) - 3)}
    if any(tuple(words[i:i + 4]) in grams for i in range(len(words) - 3)):
        return "copies the prompt"
    if answer_tokens >= max_new_tokens:
        return "runs to the token limit"
    return "other miss"


def answer_kinds_section(tables: Path, config: dict) -> list[str]:
    """Per task and variant, how many answers fall in each kind: whether tuning broke the answering itself."""
    path = tables / "cells.parquet"
    if not path.exists():
        return []
    df = read_parquet(path)
    need = {"variant", "task", "answer", "recall", "question", "answer_tokens"}
    if not need <= set(df.columns) or df.empty:
        return []
    pr = PromptConfig.of(config)
    limit = EvalConfig.of(config).max_new_tokens
    instruction = " ".join([pr.system, pr.instruction])
    kinds = [answer_kind(a, r, int(t) if t is not None and t == t else 0, limit, instruction)
             for a, r, t in zip(df["answer"], df["recall"], df["answer_tokens"])]
    df = df.assign(kind=kinds)
    L = ["## How the answers went", "",
         "Every cell's answer, by kind (`answered`: at least one fact found; `copies the prompt`: no fact, and 4 "
         "consecutive words of the system line or instruction repeated (not the question: restating it is how an answer starts); `runs to the token limit`: no "
         f"fact and no end of turn within {limit} tokens, an essay-like continuation; `other miss`: a short wrong "
         "answer). n cells per row.", "",
         "| task | variant | n | " + " | ".join(ANSWER_KINDS) + " |", "| --- | --- | ---: |" + " ---: |" * len(ANSWER_KINDS)]
    for (task, variant), g in sorted(df.groupby(["task", "variant"]),
                                     key=lambda kv: (kv[0][0], variant_rank(kv[0][1]))):
        counts = g["kind"].value_counts()
        L.append(f"| {task} | {variant} | {len(g)} | " + " | ".join(
            f"{int(counts.get(k, 0))} ({100 * counts.get(k, 0) / len(g):.0f}%)" for k in ANSWER_KINDS) + " |")
    L.append("")
    base = df[df["variant"] == "baseline"]
    rows = []
    for task, g in base.groupby("task"):
        perfect = sorted(int(n) for n, s in g.groupby("length")["score"] if (s == 10).all())
        if not perfect:
            continue
        at = df[(df["task"] == task) & df["length"].isin(perfect)]
        means = at.groupby("variant")["score"].agg(["mean", "size"])
        order = [v for v in VARIANTS if v in means.index]
        rows.append(f"- {task}: the untuned baseline scores 10 in every cell at {', '.join(map(str, perfect))} "
                    "tokens; there, mean score " + ", ".join(
                        f"{v} {num(means.loc[v, 'mean'])} (n = {int(means.loc[v, 'size'])})" for v in order)
                    + ". Anything below 10 there is harm done by tuning (or the marker), not the context length.")
    if rows:
        L += ["Where the baseline is perfect:", ""] + rows + [""]
    return L


def read_optional_csv(path: Path) -> list[dict]:
    """A measure table: absent in tables made before eval.measure existed, header-only when no cell has measures."""
    return read_csv(path) if path.exists() else []


def diff_interval(row: dict, digits: int = 3) -> str:
    return (f"{signed(row['diff'], digits)} [{signed(row['diff_ci_low'], digits)}, "
            f"{signed(row['diff_ci_high'], digits)}]")


def measure_verdict(row: dict, what: str, unit: str, digits: int = 3) -> str:
    """One sentence from a paired measure comparison; as verdict(): the interval decides."""
    lo, hi = float(row["diff_ci_low"]), float(row["diff_ci_high"])
    head = (f"{what}: {diff_interval(row, digits)}{' ' + unit if unit else ''} ({num(row['mean_variant'], digits)} vs "
            f"{num(row['mean_reference'], digits)}, n = {row['n']} matched cells)")
    if lo > 0:
        return head + " — higher, the 95% interval excludes zero."
    if hi < 0:
        return head + " — lower, the 95% interval excludes zero."
    return head + " — no detectable change: the interval contains zero."


MIDDLE, EDGES = "40-60", ("0-20", "80-100")


def mechanism_section(measures: list[dict], mdeltas: list[dict]) -> list[str]:
    """The page's mechanism section from measures.csv and measure_deltas.csv (empty when no cell has measures)."""
    overall = [r for r in measures if r["scope"] == "overall"]
    if not overall:
        return []
    by = {(d["metric"], d["scope"], d["band"], d["model"], d["task"], d["variant"], d["reference"]): d
          for d in mdeltas if d["scope"] in ("overall", "depth_band")}
    L = ["## Mechanism: answer likelihood and attention", "",
         "Per cell (`eval.measure`), on the cache the answer was generated from: the summed log-probability of the "
         "expected answer teacher-forced after the prompt (mean over a cell's answers; the needle sentence, value or "
         "variable names), and the attention of the last prompt token (mean over heads and layers) on the needle's "
         "tokens, on pause tokens and on the first 4 tokens (sink); needle ratio = needle share / the needle's share "
         "of the tokens (1: no preference). Differences are paired over matched cells with 95% bootstrap intervals "
         "(`results/tables/measure_deltas.csv`).", "",
         "| model | task | variant | n | answer log-prob | Δ vs baseline [95% CI] | needle attention | "
         "Δ vs baseline [95% CI] | needle ratio | pause attention | sink attention |",
         "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    overall.sort(key=lambda r: (r["model"], r["task"], variant_rank(r["variant"])))
    for r in overall:
        key = (r["model"], r["task"], r["variant"], "baseline")
        lp = by.get(("logprob", "overall", "all") + key)
        na = by.get(("needle_attention", "overall", "all") + key)
        L.append(f"| {r['model']} | {r['task']} | {r['variant']} | {r['n']} | {num(r['mean_logprob'])} | "
                 f"{diff_interval(lp, 2) if lp else '–'} | {num(r['mean_needle_attention'], 4)} | "
                 f"{diff_interval(na, 4) if na else '–'} | {num(r['mean_needle_ratio'])} | "
                 f"{num(r['mean_pause_attention'], 4)} | {num(r['mean_sink_attention'], 3)} |")
    L.append("")
    for model, task in sorted({(r["model"], r["task"]) for r in overall}):
        L += [f"**{model} / {task}**", ""]
        bands = {(r["variant"], r["band"]): r for r in measures
                 if r["scope"] == "depth_band" and r["model"] == model and r["task"] == task}
        for v in [v for v in VARIANTS if (v, MIDDLE) in bands]:
            edges = [bands[(v, b)] for b in EDGES if (v, b) in bands]
            if not edges:
                continue
            mid = float(bands[(v, MIDDLE)]["mean_needle_attention"])
            low = all(mid < float(e["mean_needle_attention"]) for e in edges)
            where = "lower in the middle than at every edge" if low else "not lower in the middle than at every edge"
            L.append(f"- {v}: needle attention share at depths {MIDDLE}% {num(mid, 4)} against "
                     + " and ".join(f"{num(e['mean_needle_attention'], 4)} at {e['band']}%" for e in edges)
                     + f": {where} (descriptive; cells of one variant across depths are not paired).")
        for variant, reference, what in [
            ("pause-prompt", "baseline", "the pause marker alone (pause-prompt vs baseline)"),
            ("pause-tuned", "baseline", "pause-tuning (pause-tuned vs baseline)"),
            ("pause-tuned", "plain-tuned", "pause-tuning against plain tuning (pause-tuned vs plain-tuned)"),
            ("pause-tuned", "pause-prompt", "pause-tuning against the marker alone (pause-tuned vs pause-prompt)"),
        ]:
            for metric, scope, band, label, unit, digits in (
                    ("logprob", "overall", "all", "answer log-prob", "nats", 2),
                    ("needle_attention", "overall", "all", "needle attention share", "", 4),
                    ("needle_attention", "depth_band", MIDDLE, f"needle attention share at depths {MIDDLE}%", "", 4),
                    ("pause_attention", "overall", "all", "attention on pause tokens", "", 4)):
                d = by.get((metric, scope, band, model, task, variant, reference))
                if d:
                    L.append(f"- {measure_verdict(d, what[0].upper() + what[1:] + ', ' + label, unit, digits)}")
        L.append("")
    return L


def intro(config: dict, tables: Path) -> list[str]:
    """The title, what the scores and intervals are, and the cells left out as unreadable (if any)."""
    L = [f"# {PublishConfig.of(config).title}", "",
         "Written by the pipeline (`pausetune publish`, from `results/tables/`); do not edit by hand. "
         "The primary scale is recall of the needle's facts in percentage points (pp); the NIAH 1–10 score "
         "(1 + 9 × recall) is kept as a secondary column. A contrast pairs cells of the same model, task, haystack "
         "seed, length and depth (and training seed, when both arms are tuned); its 95% interval resamples training "
         "runs, then (length, depth) points, then cells within a point (a hierarchical bootstrap), so it carries "
         "the run-to-run variance; beside it the exact McNemar test on the paired found / missed outcomes, "
         "Holm-adjusted over the secondary contrasts.", ""]
    manifest = tables / "manifest.json"
    skipped = read_json(manifest).get("skipped_cells", []) if manifest.exists() else []
    if skipped:
        L += [f"**{len(skipped)} eval cell(s) left out** of these tables as unreadable (config "
              f"report.skip_bad_cells): " + ", ".join(f"`{s['path']}`" for s in skipped), ""]
    return L


def primary_section(deltas: list[dict], seeds: list[dict], config: dict, wall_s: float | None = None) -> list[str]:
    """The declared primary endpoint first: its contrast, interval, exact test, each training run's own contrast,
    the spread between runs and what the design could detect; the reading generated from the numbers; and what the
    whole run took (`wall_s`: the summed wall time of its jobs, when Snakemake measured them)."""
    prim = [d for d in deltas if is_true(d.get("primary"))]
    L = ["## Primary result", ""]
    if wall_s:
        L += [f"Measured wall time of the run that made this page: {wall_s / 60:.0f} min (the sum of its jobs' wall "
              f"times, training included; per stage under \"How this was made\").", ""]
    if not prim:
        return L + ["No primary endpoint in this grid: config `report.primary` is unset and the default (pause-tuned "
                    "vs plain-tuned, recall, task `bank`, all lengths) is not among these cells. Every contrast "
                    "below is secondary.", ""]
    declared = (config.get("report") or {}).get("primary")
    for d in prim:
        lengths = (declared or {}).get("lengths")
        L += [f"Declared in {'config `report.primary`' if declared else 'the default endpoint (config `report.primary` unset)'}: "
              f"**{d['variant']} vs {d['reference']}**, recall in percentage points, task `{d['task']}`, model "
              f"`{d['model']}`, {'lengths ' + ', '.join(map(str, lengths)) if lengths else 'all lengths'}.", "",
              f"- {verdict(d, 'Primary contrast')}"]
        own = [s for s in seeds if (s["model"], s["task"], s["variant"], s["reference"]) ==
               (d["model"], d["task"], d["variant"], d["reference"])]
        if len(own) > 1:
            L.append(f"- Each training run's own contrast: " + ", ".join(
                f"seed {s['train_seed']} {signed(s['recall_diff_pp'])} pp (n = {s['n']})" for s in own)
                + f"; standard deviation between runs {num(d['sigma_runs_pp'], 1)} pp.")
            ups = sum(float(s["recall_diff_pp"]) > 0 for s in own)
            downs = sum(float(s["recall_diff_pp"]) < 0 for s in own)
            L.append(f"- {ups} of {len(own)} runs favour {d['variant']}, {downs} favour {d['reference']}"
                     + (f", {len(own) - ups - downs} tie." if len(own) - ups - downs else "."))
        else:
            L.append("- One training run per arm: the interval answers \"another haystack, same adapters?\", not "
                     "\"another training run?\" (set `train.seeds` to several seeds for that).")
        L.append("")
    return L


def summary_section(summary: list[dict], deltas: list[dict]) -> list[str]:
    """Per model x task x variant: recall, the closed-book guess rate, the change against the baseline; then the
    other comparisons (secondary, Holm-adjusted)."""
    L = ["## Summary", "",
         "Closed book: the same questions with the document left empty (no haystack, no needle), the guess rate "
         "every recall is read against ('–' where eval.closed_book was off).", "",
         "| model | task | variant | runs | n | recall % | closed-book recall % | exact | mean score | "
         "recall vs baseline, pp [95% CI] | score % vs baseline [95% CI] |",
         "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by_cmp = {(d["model"], d["task"], d["variant"], d["reference"]): d for d in deltas}
    overall = sorted((r for r in summary if r["kind"] == "overall"),
                     key=lambda r: (r["model"], r["task"], variant_rank(r["variant"])))
    pct = lambda x: num(float(x) * 100, 1) if x not in (None, "", "nan", "NaN") else "–"
    for r in overall:
        d = by_cmp.get((r["model"], r["task"], r["variant"], "baseline"))
        L.append(f"| {r['model']} | {r['task']} | {r['variant']} | {r.get('runs') or 1} | {r['n']} | "
                 f"{pct(r['mean_recall'])} | {pct(r.get('closed_book_recall'))} | {num(r['exact_rate'])} | "
                 f"{num(r['mean_score'])} | {interval(d, 'recall_diff_pp') if d else '–'} | "
                 f"{interval(d) + '%' if d else '–'} |")
    L += ["", f"For reference (not the same model, data or grid), the paper reports +{PAPER['3B']}% (Llama-3.2-3B) and +{PAPER['8B']}% (Llama-3.1-8B) "
          "average single-needle score for pause-tuning over the untuned baseline.", ""]
    other = [d for d in deltas if d["reference"] != "baseline"]
    if other:
        L += ["| model | task | comparison | runs | n | recall pp [95% CI] | σ runs (pp) | exact wins:losses | "
              "p (exact) | p (Holm) | score % [95% CI] |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        L += [f"| {d['model']} | {d['task']} | {d['variant']} vs {d['reference']}"
              f"{' (primary)' if is_true(d.get('primary')) else ''} | {d.get('runs') or 1} | {d['n']} | "
              f"{interval(d, 'recall_diff_pp')} | {num(d.get('sigma_runs_pp'), 1)} | "
              f"{d['exact_wins']}:{d['exact_losses']} | {pvalue(d['p_exact'])} | "
              f"{'–' if is_true(d.get('primary')) else pvalue(d['p_holm'])} | {interval(d)}% |" for d in other]
        L.append("")
    return L


def variance_section(variance: list[dict]) -> list[str]:
    """Where the variance of each tuned contrast comes from, what this design detects, and how many training runs
    an effect needs (variance_components.csv)."""
    rows = [v for v in variance if v.get("runs_for_10pp") not in (None, "", "nan") or int(float(v["runs"])) > 1]
    if not rows:
        return []
    sd = lambda x: num(math.sqrt(max(0.0, float(x))), 1)
    L = ["## Where the variance comes from", "",
         "Per contrast with a tuned arm: the standard deviation of the paired recall difference between training "
         "runs, between (length, depth) points within a run, and between cells within a point (method of moments), "
         "the minimum detectable effect of the design run (80% power, α = 0.05), and the training runs per arm an "
         "effect of the observed size, and one of 10 pp, would need on this grid.", "",
         "| model | task | contrast | runs | points / run | cells / point | σ runs | σ points | σ cells | MDE (pp) | "
         "observed (pp) | runs for observed | runs for 10 pp |",
         "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for v in rows:
        need = lambda x: "–" if x in (None, "", "nan", "NaN") else (str(int(float(x))))
        L.append(f"| {v['model']} | {v['task']} | {v['variant']} vs {v['reference']} | {v['runs']} | "
                 f"{num(v['points_per_run'], 0)} | {num(v['cells_per_point'], 1)} | {sd(v['var_run_pp2'])} | "
                 f"{sd(v['var_point_pp2'])} | {sd(v['var_cell_pp2'])} | {num(v['mde_pp'], 1)} | "
                 f"{num(v['effect_pp'], 1)} | {need(v['runs_for_effect'])} | {need(v['runs_for_10pp'])} |")
    return L + [""]


def u_interval(row: dict) -> str:
    return f"{signed(row['u_pp'])} [{signed(row['u_ci_low'])}, {signed(row['u_ci_high'])}]"


def u_verdict(row: dict) -> str:
    """A U depth (or a difference of two) with its interval, read from the interval alone."""
    lo, hi = float(row["u_ci_low"]), float(row["u_ci_high"])
    if lo > 0:
        return "deeper" if row.get("reference") else "a lost-in-the-middle U"
    if hi < 0:
        return "shallower" if row.get("reference") else "an inverted U (the middle recalled best)"
    return "no detectable change" if row.get("reference") else "no detectable U"


def u_section(rows: list[dict]) -> list[str]:
    """Is the middle lost, at the lengths that fill at most half the window, and what does tuning do to it
    (u_shape.csv): every sentence from the table, the interval deciding."""
    if not rows:
        return []
    L = ["## Lost in the middle?", "",
         "The U depth: recall of needles at the edges of the document (depth ≤ 10 or ≥ 90) minus recall in the "
         "middle (25-75), in points, over the lengths that fill at most half the model's window (where the "
         "lost-in-the-middle U shows most clearly) and over all lengths; the 95% interval resamples training runs, "
         "then lengths, then depths (u_shape.csv).", ""]
    for (model, task) in dict.fromkeys((r["model"], r["task"]) for r in rows):
        own = [r for r in rows if r["model"] == model and r["task"] == task]
        scopes = [s for s in ("half_window", "all") if any(r["scope"] == s for r in own)]
        for scope in scopes[:1]:
            sel = [r for r in own if r["scope"] == scope]
            lengths = sel[0]["lengths"].split()
            span = f"{fmt_tokens(int(lengths[0]))}-{fmt_tokens(int(lengths[-1]))}" if len(lengths) > 1 \
                else fmt_tokens(int(lengths[0]))
            fill = f", at most {100 * float(sel[0]['fill_max']):.0f}% of the window" \
                if sel[0]["fill_max"] not in ("", "nan", "NaN") else ""
            L.append(f"**{model} / {task}, {span} tokens{fill}:**")
            L.append("")
            for r in sel:
                if r["reference"]:
                    continue
                L.append(f"- {r['variant']}: edges {num(r['recall_edge_pp'], 1)}%, middle {num(r['recall_middle_pp'], 1)}% "
                         f"(n = {r['n_edge']} + {r['n_middle']} cells, {runs_text(r)}): U depth "
                         f"{u_interval(r)} pp, {u_verdict(r)}.")
            for r in sel:
                if r["reference"] and (r["variant"], r["reference"]) in (
                        ("pause-tuned", "plain-tuned"), ("pause-tuned", "baseline"), ("plain-tuned", "baseline")):
                    L.append(f"- {r['variant']} against {r['reference']}: the U depth changes by "
                             f"{u_interval(r)} pp ({runs_text(r)}): {u_verdict(r)}.")
            L.append("")
    L += ["| model | task | variant | against | lengths | edges (%) | middle (%) | U depth (pp) [95% CI] | runs |",
          "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["scope"].startswith("len") and not r["reference"]:
            L.append(f"| {r['model']} | {r['task']} | {r['variant']} | – | {fmt_tokens(int(r['lengths']))} | "
                     f"{num(r['recall_edge_pp'], 1)} | {num(r['recall_middle_pp'], 1)} | {u_interval(r)} | "
                     f"{r['runs']} |")
    return L + [""]


def distance_section(dist: list[dict], eff: list[dict]) -> list[str]:
    """How far from the question a fact can sit and still be found (distance.csv), and the longest context each
    variant keeps (effective_length.csv): every number from the tables."""
    d50 = [r for r in dist if r["kind"] == "d50"]
    if not d50 and not eff:
        return []
    L = ["## Distance to the question and effective length", ""]
    if d50:
        L += ["D50: the distance (tokens from the needle's end to the question) at which a logistic fit of recall on "
              "log2 distance crosses 50%, with a 95% interval that resamples training runs, then cells "
              "(distance.csv; `above`: recall stays above 50% over every distance measured, `below`: under it).", "",
              "| model | task | variant | cells | runs | recall (%) | D50 (tokens) [95% CI] | slope per doubling |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in d50:
            val = f"{num(r['d50'], 0)} [{num(r['d50_ci_low'], 0)}, {num(r['d50_ci_high'], 0)}]" \
                if r["status"] == "crosses" else f"{r['status']} [{num(r['d50_ci_low'], 0)}, {num(r['d50_ci_high'], 0)}]"
            L.append(f"| {r['model']} | {r['task']} | {r['variant']} | {r['n']} | {r['runs']} | "
                     f"{num(r['recall_pp'], 1)} | {val} | {num(r['slope'], 2)} |")
        L.append("")
    if eff:
        L += ["Effective length: the longest length up to which mean recall stays at or above the threshold at every "
              "shorter length (effective_length.csv; 0: below it already at the shortest length), by a fixed "
              "threshold and by a share of the variant's own recall at the shortest length; the interval from "
              "resampled runs and cells.", "",
              "| model | task | variant | rule | threshold (recall) | shortest-length recall (%) | effective length [95% CI] |",
              "| --- | --- | --- | --- | ---: | ---: | ---: |"]
        for r in eff:
            val = (f"{r['effective_length']} [{r['el_ci_low']}, {r['el_ci_high']}]" if r["effective_length"] != ""
                   else "– (no recall at the shortest length)")
            L.append(f"| {r['model']} | {r['task']} | {r['variant']} | {r['rule']} | {num(r['threshold'], 2)} | "
                     f"{num(r['short_recall_pp'], 1)} | {val} |")
        L.append("")
    return L


READINGS = [  # (variant, reference, what the comparison tests), in the order the page reads them
    ("pause-prompt", "baseline", "The pause marker alone (pause-prompt vs baseline)"),
    ("pause-tuned", "baseline", "Pause-tuning (pause-tuned vs baseline)"),
    ("pause-tuned", "plain-tuned", "Pause-tuning against tuning on the same essays without pauses (pause-tuned vs plain-tuned)"),
    ("plain-tuned", "baseline", "Tuning on the essays alone (plain-tuned vs baseline)"),
    ("pause-tuned", "plain-tuned-on-paused", "The weights, on the paused haystack (pause-tuned vs plain-tuned-on-paused)"),
    ("pause-tuned-on-plain", "plain-tuned", "The weights, on the plain haystack (pause-tuned-on-plain vs plain-tuned)"),
    ("pause-tuned", "pause-tuned-on-plain", "The markers in the input, for pause-tuned weights (pause-tuned vs pause-tuned-on-plain)"),
    ("plain-tuned-on-paused", "plain-tuned", "The markers in the input, for plain-tuned weights (plain-tuned-on-paused vs plain-tuned)"),
    ("pause-before-answer", "baseline", "Time to think without training: pauses after the question (pause-before-answer vs baseline)"),
    ("pause-tuned", "pause-before-answer", "Trained pauses against inference-only ones (pause-tuned vs pause-before-answer)"),
    ("ms-poe", "baseline", "A training-free positional method: Ms-PoE's per-head position scaling (ms-poe vs baseline)"),
    ("pause-tuned", "ms-poe", "Pause-tuning against the training-free method (pause-tuned vs ms-poe)"),
]


BANK_KINDS = {True: "in-template", "eval": "in-template", "eval_ood": "out-of-template", "associations": "low-overlap"}
TRANSFER_CONTRASTS = [("pause-tuned", "plain-tuned"), ("pause-tuned", "baseline"), ("plain-tuned", "baseline"),
                      ("pause-before-answer", "baseline"), ("pause-tuned", "pause-before-answer"), ("ms-poe", "baseline"),
                      ("pause-tuned", "ms-poe")]


def task_kind(spec: dict) -> str:
    """What a task's needles test: its bank's kind (tasks.X.bank), or the fixed needle(s) of the config."""
    bank = spec.get("bank")
    return BANK_KINDS.get(bank, str(bank)) if bank else "fixed needle"


def transfer_section(summary: list[dict], deltas: list[dict], config: dict) -> list[str]:
    """In-template vs out-of-template vs low-overlap needles side by side: recall per variant and task, then the
    tuned contrasts per task (deltas.csv). Only for a grid with a transfer bank (eval_ood or associations)."""
    tasks = [t for t in config["eval"]["tasks"] if t in config["tasks"]]
    kinds = {t: task_kind(config["tasks"][t]) for t in tasks}
    if not {"out-of-template", "low-overlap"} & set(kinds.values()):
        return []
    overall = {(r["model"], r["task"], r["variant"]): r for r in summary if r["kind"] == "overall"}
    by_cmp = {(d["model"], d["task"], d["variant"], d["reference"]): d for d in deltas}
    head = " | ".join(f"{t} ({kinds[t]})" for t in tasks)
    rule = " | ".join("---:" for _ in tasks)
    L = ["## Transfer: in-template, out-of-template and low-overlap needles", "",
         "The same variants on needles shaped like the training facts (in-template: only the words held out), on "
         "sentence shapes no training template has (out-of-template), and on facts the question shares no content "
         "word with (low-overlap: a landmark's city). Recall % (n cells) per variant and task (summary.csv):", "",
         f"| model | variant | {head} |", f"| --- | --- | {rule} |"]
    models = sorted({m for m, _, _ in overall})
    for model in models:
        for v in sorted({v for m, _, v in overall if m == model}, key=variant_rank):
            cells = []
            for t in tasks:
                r = overall.get((model, t, v))
                cells.append(f"{num(float(r['mean_recall']) * 100, 1)} ({r['n']})" if r else "–")
            L.append(f"| {model} | {v} | " + " | ".join(cells) + " |")
    L += ["", "Recall difference in percentage points [95% CI, runs then points then cells] per task (deltas.csv):",
          "", f"| model | comparison | {head} |", f"| --- | --- | {rule} |"]
    for model in models:
        for v, ref in TRANSFER_CONTRASTS:
            row = [by_cmp.get((model, t, v, ref)) for t in tasks]
            if any(row):
                L.append(f"| {model} | {v} vs {ref} | "
                         + " | ".join(interval(d, "recall_diff_pp") + f" (n {d['n']})" if d else "–" for d in row)
                         + " |")
    L.append("")
    return L


def reading_section(summary: list[dict], deltas: list[dict], tables: Path) -> list[str]:
    """Per model x task, what the numbers say, each sentence from a fixed rule (verdict, band_changes)."""
    overall = [r for r in summary if r["kind"] == "overall"]
    by_cmp = {(d["model"], d["task"], d["variant"], d["reference"]): d for d in deltas}
    L = ["## Reading", ""]
    for (model, task) in sorted({(r["model"], r["task"]) for r in overall}):
        L += [f"**{model} / {task}**", ""]
        rows = [r for r in overall if r["model"] == model and r["task"] == task]
        if rows and all(float(r["mean_recall"]) == 0 for r in rows):
            L.append(f"- Every variant recalls none of the facts in any cell (score 1 throughout): at these lengths the "
                     f"task is beyond the model (a floor effect), so it cannot show a difference either way.")
        for variant, reference, what in READINGS:
            d = by_cmp.get((model, task, variant, reference))
            if d:
                L.append(f"- {verdict(d, what)}")
        tuned = [by_cmp.get((model, task, v, "baseline")) for v in ("pause-tuned", "plain-tuned")]
        if all(tuned) and all(float(d["pct_ci_high"]) < 0 for d in tuned):
            L.append("- Both tuned variants score below the untuned baseline, each interval excluding zero: tuning on "
                     "the essays itself costs retrieval here, so pause-tuned vs plain-tuned (same essays, same recipe, "
                     "with and without the markers) is the comparison that isolates the pauses.")
        hard = where_baseline_fails(tables, model, task)
        if hard:
            L.append(hard)
        for variant in ("pause-prompt", "pause-tuned", "plain-tuned"):
            for kind, label in (("depth_band", "depth bands"), ("length_band", "length bands")):
                changes = band_changes(summary, model, task, variant, kind, min_diff=1.0)
                if changes:
                    L.append(f"- {variant} differs from baseline by at least 1 point in {label}: "
                             + "; ".join(changes) + ".")
        L.append("")
    return L
