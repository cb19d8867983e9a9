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
