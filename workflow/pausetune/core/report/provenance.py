"""How a results page was made: the command, config hash, machine, packages, time per stage, the training
recipe against the authors', which essays trained and which formed the haystack, and each checkpoint's losses."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

from ..config import ExamplesConfig, ShardsConfig, TrainConfig
from ..io import read_json
from .page import num


# The authors' recipe (paper + Unsloth notebook, MISSION.md): what each run's recipe is held against on its page.
PAPER_RECIPE = {"objective": "retrieval", "loss_on": "answer", "lora.r": 16, "lora.alpha": 16, "lora.dropout": 0.0,
                "lora.target_modules": "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj",
                "lr": 0.0002, "warmup_steps": 5, "max_steps": 60, "batch_size": 2, "grad_accum": 4,
                "scheduler": "linear", "quantization": "nf4",
                "context tokens": "~15K (their records)"}


def stage_times(bench_dir: Path) -> list[tuple[str, int, float, float, float]]:
    """Per rule: (rule, jobs, summed wall s, summed CPU s, peak RSS MB) from Snakemake `benchmark:` files
    (benchmarks/{rule}/...), in pipeline order."""
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for f in sorted(bench_dir.rglob("*.tsv")) if bench_dir.exists() else []:
        rule = f.relative_to(bench_dir).parts[0]
        with open(f, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows and "s" in rows[0]:
            t = totals[rule]
            t[0] += 1
            t[1] += float(rows[-1]["s"])
            t[2] += float(rows[-1].get("cpu_time") or 0)
            t[3] = max(t[3], float(rows[-1].get("max_rss") or 0))
    order = ["download", "paragraphs", "prepare_model", "shards", "train", "eval", "aggregate", "figures", "publish"]
    rank = {r: i for i, r in enumerate(order)}
    return [(rule, *totals[rule]) for rule in sorted(totals, key=lambda r: (rank.get(r, len(order)), r))]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores{mem}{gpu}"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("pausetune", "torch", "transformers", "peft", "bitsandbytes", "datasets", "snakemake", "dvc",
                "pandas", "altair"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def config_hash(config: dict) -> str:
    """Of the whole resolved config: Snakemake and DVC hand publish all of it, so both give the same hash."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def essays_used(shard_manifests: list[str]) -> list[str]:
    """Which essays trained each checkpoint and which formed the haystack: the memorisation control."""
    groups: dict[tuple, list[str]] = {}
    for path in shard_manifests:
        m = read_json(path)
        sets = tuple(frozenset(m[k]) for k in ("train_essays", "validation_essays", "haystack_essays"))
        groups.setdefault((sets, m["holdout_haystack"]), []).append(f"`{Path(path).parent}`")
    out = []
    for ((train, val, hay), held), names in groups.items():
        overlap = sorted(hay & (train | val))
        out.append(f"- Shards {' and '.join(names)}: {len(train)} training and {len(val)} validation essays; "
                   f"haystack {len(hay)} essays, {len(overlap)} of them also trained on"
                   f"{' (holdout on)' if held else ' (holdout off: the tuned model has seen the haystack)'}. "
                   f"Haystack: {', '.join(sorted(hay)) or '–'}. Training: {', '.join(sorted(train)) or '–'}.")
    return out


def recipe_section(config: dict) -> list[str]:
    """The training recipe that ran, beside the authors', departures marked: a reader needs no config file."""
    tr = TrainConfig.of(config)
    if not tr.models:
        return []
    ex = ExamplesConfig.of(config)
    retrieval = tr.objective == "retrieval"
    ran = {"objective": tr.objective, "loss_on": tr.loss_on if retrieval else "all (causal LM)",
           "lora.r": tr.lora.r, "lora.alpha": tr.lora.alpha, "lora.dropout": tr.lora.dropout,
           "lora.target_modules": ", ".join(sorted(tr.lora.target_modules)),
           "lr": tr.lr, "warmup_steps": tr.warmup_steps, "max_steps": tr.max_steps,
           "batch_size": tr.batch_size, "grad_accum": tr.grad_accum, "scheduler": tr.scheduler,
           "quantization": tr.quantization,
           "context tokens": (f"{ex.lengths['min']}-{ex.lengths['max']}" if retrieval
                              else f"{ShardsConfig.of(config).seq_len} (packed rows)")}
    extra = f"dtype {tr.dtype}, autocast {tr.autocast}"
    L = ["Training recipe (config `train`, `examples`) against the authors' (paper + their Unsloth notebook); "
         f"**bold** where this run departs; also {extra}:", "", "| setting | this run | the authors |",
         "| --- | --- | --- |"]
    for k, theirs in PAPER_RECIPE.items():
        mine = ran.get(k)
        same = str(mine) == str(theirs) or (isinstance(mine, (int, float)) and isinstance(theirs, (int, float))
                                            and float(mine) == float(theirs))
        L.append(f"| {k} | {mine if same else f'**{mine}**'} | {theirs} |")
    return L + [""]


def provenance_section(config: dict, run_info: dict | None, bench_dir: Path, checkpoints: list[str],
                       shard_manifests: list[str]) -> list[str]:
    """The page's "How this was made": command, config hash, machine, packages, stage times, recipe, data, losses."""
    L = ["## How this was made", ""]
    if run_info:
        L.append(f"- Command: `{run_info.get('command', '?')}` (started {run_info.get('started', '?')})")
    else:
        L.append("- Command: not recorded (results/run_info.json is Snakemake's; another runner made this page, "
                 "e.g. `dvc repro`)")
    L += [f"- Config hash: `{config_hash(config)}` (sha256 of the resolved config, first 16 hex digits)",
          f"- Machine: {machine()}",
          "- Packages: " + ", ".join(f"{k} {v}" for k, v in versions().items())]
    L += timing_lines(bench_dir)
    L += [""] + recipe_section(config) + essays_used(list(shard_manifests))
    for path in checkpoints:
        m = read_json(path)
        L.append(f"- Checkpoint `{Path(path).parent}`: final train loss {num(m['final_train_loss'], 3)}, "
                 f"validation loss {num(m['final_val_loss'], 3)}, {m['steps']} steps, {num(m['wall_time_s'], 0)} s")
    return L + [""]


def timing_lines(bench_dir: Path) -> list[str]:
    """Measured wall time per stage as a table, or one line saying it was not measured."""
    times = stage_times(bench_dir)
    if not times:
        return [f"- Wall time per stage: not measured (no Snakemake benchmark files under {bench_dir}/)"]
    L = ["", "Measured wall time per stage (Snakemake `benchmark:` files, summed over the stage's jobs):", "",
         "| stage (rule) | jobs | wall time | CPU time | peak RSS |", "| --- | ---: | ---: | ---: | ---: |"]
    L += [f"| {rule} | {n} | {s / 60:.1f} min | {c / 60:.1f} min | {rss / 1024:.1f} GiB |"
          for rule, n, s, c, rss in times]
    L.append(f"| **total (sum of jobs)** | {sum(t[1] for t in times)} | {sum(t[2] for t in times) / 60:.1f} min | "
             f"{sum(t[3] for t in times) / 60:.1f} min | |")
    return L
