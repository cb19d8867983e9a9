"""Paired bootstrap over matched cells: the interval every comparison on the page carries."""
from __future__ import annotations

import math
import zlib

from ..config import schema_default

DEFAULT_BOOTSTRAP = schema_default("report", "bootstrap")


def comparison_seed(seed: int, model: str, task: str, variant: str, reference: str) -> list[int]:
    return [int(seed), zlib.crc32(f"{model}/{task}/{variant}/{reference}".encode())]


def paired_bootstrap(variant_scores, reference_scores, b: int = DEFAULT_BOOTSTRAP, seed=0) -> dict:
    """Percent and point improvement of paired means, with 95% paired percentile-bootstrap intervals.

    variant_scores[i] and reference_scores[i] are the scores of matched cell i. Each of the `b` resamples
    draws n indices with replacement (the same indices for both arms: paired), from numpy's default_rng(seed).
    """
    import numpy as np

    v = np.asarray(variant_scores, dtype=float)
    r = np.asarray(reference_scores, dtype=float)
    if v.shape != r.shape or v.ndim != 1:
        raise ValueError("paired_bootstrap: need two 1-D arrays of the same length")
    n = len(v)
    if n == 0:
        return {k: math.nan for k in ("diff", "diff_ci_low", "diff_ci_high", "pct", "pct_ci_low", "pct_ci_high")}

    def pct(mv, mr):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(mr != 0, (mv - mr) * 100.0 / mr, np.nan)

    mv, mr = v.mean(), r.mean()
    rng = np.random.default_rng(seed)
    chunk = max(1, min(b, 2_000_000 // n))
    diffs, pcts = [], []
    done = 0
    while done < b:
        k = min(chunk, b - done)
        idx = rng.integers(0, n, size=(k, n))
        bv, br = v[idx].mean(axis=1), r[idx].mean(axis=1)
        diffs.append(bv - br)
        pcts.append(pct(bv, br))
        done += k
    diffs, pcts = np.concatenate(diffs), np.concatenate(pcts)
    d_lo, d_hi = np.quantile(diffs, [0.025, 0.975])
    if np.isnan(pcts).any():
        p_lo = p_hi = math.nan
    else:
        p_lo, p_hi = np.quantile(pcts, [0.025, 0.975])
    return {"diff": float(mv - mr), "diff_ci_low": float(d_lo), "diff_ci_high": float(d_hi),
            "pct": float(pct(mv, mr)), "pct_ci_low": float(p_lo), "pct_ci_high": float(p_hi)}


# ---------------------------------------------------------------------------------------------------------
# Statistics over training runs (issue #26): an exact test for paired binary outcomes, Holm's adjustment, a
# bootstrap that resamples what varies (runs, then points, then cells), and variance components with the
# minimum detectable effect they imply. Pure functions; the tables wire them in once training seeds are an axis.


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value of paired binary outcomes: `wins` pairs where only the variant succeeded,
    `losses` where only the reference did (ties carry no information). The discordant pairs are Binomial(n, 1/2)
    under no difference; p = P(a split at least as uneven as the one seen), capped at 1."""
    wins, losses = int(wins), int(losses)
    if wins < 0 or losses < 0:
        raise ValueError("mcnemar_exact: counts must be >= 0")
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def degenerate_bootstrap(wins: int, losses: int) -> bool:
    """A percentile bootstrap of paired binary outcomes cannot put a bound beyond 0 when every discordant pair
    goes one way (each resample's difference keeps that sign): its interval then ends exactly at 0.0, and the exact
    test is the figure to read."""
    return (wins == 0) != (losses == 0)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order; NaN stays NaN."""
    ps = [float(p) for p in pvalues]
    order = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    m = len(order)
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def _nested(runs, points, values):
    """{run: {point: [values]}} in first-seen order."""
    tree: dict = {}
    for r, p, v in zip(runs, points, values):
        tree.setdefault(r, {}).setdefault(p, []).append(float(v))
    return tree


def hierarchical_bootstrap(runs, points, values, b: int = DEFAULT_BOOTSTRAP, seed=0) -> dict:
    """Mean of `values` (e.g. per-cell paired contrasts) with a 95% percentile interval that resamples training runs,
    then points within each drawn run, then cells within each drawn point (a cluster bootstrap at every level), so
    the interval carries the run-to-run variance a cell-level bootstrap leaves out.

    runs[i], points[i]: the run and the (length, depth) point of value i. Returns mean, ci_low, ci_high and n (values),
    runs, points."""
    import numpy as np

    tree = _nested(runs, points, values)
    if not tree:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "runs": 0}
    # a padded [run, point, cell] array with the counts of each level, resampled level by level in one gather
    n_runs = len(tree)
    n_pts = np.array([len(p) for p in tree.values()])
    n_cells = np.zeros((n_runs, n_pts.max()), dtype=int)
    vals = np.zeros((n_runs, n_pts.max(), max(len(c) for p in tree.values() for c in p.values())))
    for i, pts in enumerate(tree.values()):
        for j, c in enumerate(pts.values()):
            n_cells[i, j] = len(c)
            vals[i, j, :len(c)] = c
    mean = float(np.mean([v for pts in tree.values() for c in pts.values() for v in c]))
    rng = np.random.default_rng(seed)
    P, C = vals.shape[1], vals.shape[2]
    chunk = max(1, min(b, 4_000_000 // (n_runs * P * C)))
    means = []
    done = 0
    while done < b:
        k = min(chunk, b - done)
        r = rng.integers(0, n_runs, size=(k, n_runs))
        p = (rng.random((k, n_runs, P)) * n_pts[r][..., None]).astype(int)
        p_ok = np.arange(P) < n_pts[r][..., None]
        nc = n_cells[r[..., None], p]
        c = (rng.random((k, n_runs, P, C)) * nc[..., None]).astype(int)
        ok = p_ok[..., None] & (np.arange(C) < nc[..., None])
        drawn = vals[r[..., None, None], p[..., None], c]
        means.append((drawn * ok).sum(axis=(1, 2, 3)) / ok.sum(axis=(1, 2, 3)))
        done += k
    lo, hi = np.quantile(np.concatenate(means), [0.025, 0.975])
    return {"mean": mean, "ci_low": float(lo), "ci_high": float(hi), "n": int(len(values)), "runs": n_runs}


def variance_components(runs, points, values) -> dict:
    """Between-run, between-point (within a run) and within-point variances of `values`, by the method of moments
    on the nested means (negative estimates clipped at 0), with the counts they came from."""
    import numpy as np

    tree = _nested(runs, points, values)
    run_means, point_means, within = [], [], []
    n_points, n_cells = [], []
    for pts in tree.values():
        pm = [float(np.mean(c)) for c in pts.values()]
        run_means.append(float(np.mean(pm)))
        point_means.append(pm)
        n_points.append(len(pts))
        for c in pts.values():
            n_cells.append(len(c))
            if len(c) > 1:
                within.append(float(np.var(c, ddof=1)))
    s2_cell = float(np.mean(within)) if within else 0.0
    c_bar = float(np.mean(n_cells))
    between_pts = [float(np.var(pm, ddof=1)) for pm in point_means if len(pm) > 1]
    s2_point = max(0.0, (float(np.mean(between_pts)) if between_pts else 0.0) - s2_cell / c_bar)
    p_bar = float(np.mean(n_points))
    s2_run = 0.0
    if len(run_means) > 1:
        s2_run = max(0.0, float(np.var(run_means, ddof=1)) - s2_point / p_bar - s2_cell / (p_bar * c_bar))
    return {"run": s2_run, "point": s2_point, "cell": s2_cell, "runs": len(run_means), "points_per_run": p_bar,
            "cells_per_point": c_bar}


def minimum_detectable_effect(components: dict, runs: int | None = None, points: float | None = None,
                              cells: float | None = None, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean contrast a two-sided test at `alpha` detects with `power`, for a design of `runs`
    training runs x `points` points x `cells` cells (default: the design the components were measured on):
    (z_{1-alpha/2} + z_power) * sqrt(s2_run/R + s2_point/(R P) + s2_cell/(R P C))."""
    from statistics import NormalDist

    r = runs or components["runs"]
    p = points or components["points_per_run"]
    c = cells or components["cells_per_point"]
    var = components["run"] / r + components["point"] / (r * p) + components["cell"] / (r * p * c)
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(var)


def runs_needed(components: dict, effect: float, max_runs: int = 1000, **kw) -> int | None:
    """The fewest training runs per arm whose minimum detectable effect is at most `effect` (None past max_runs)."""
    for r in range(2, max_runs + 1):
        if minimum_detectable_effect(components, runs=r, **kw) <= effect:
            return r
    return None
