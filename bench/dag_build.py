"""How long Snakemake (and DVC) take to plan the paper's grid, and how many jobs it is.

    python bench/dag_build.py [--repeat 3] [--limit 15] [--no-dvc]

In a fresh copy of the project (no outputs, so every job is planned): `snakemake -n --configfile
config/paper.yaml` against a same-run baseline, `snakemake -n` on the embedded default config. Reports
wall seconds (best of --repeat), the ratio to the baseline, and the jobs per rule; exits 1 when the paper's
DAG takes longer than --limit seconds. No model hub is contacted (HF_HUB_OFFLINE=1): planning must not need
it. With DVC: `dvc stage list` of dvc.yaml with the paper's config merged into config/config.yaml.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
from pausetune.core.config import deep_merge  # noqa: E402

FILES = ["Snakefile", "workflow", "config", "dvc.yaml", ".dvc/config", ".dvcignore"]


def copy_project(dest: Path) -> Path:
    for name in FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
                DVC_NO_ANALYTICS="1")


def timed(cmd: list[str], cwd: Path, repeat: int) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        best, out = min(best, dt), proc.stdout + proc.stderr
    return best, out


def job_counts(text: str) -> dict[str, int]:
    counts, table = {}, False
    for line in text.splitlines():
        if line.startswith("job") and "count" in line:
            table = True
        elif table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] == "total":
                    break
                counts[parts[0]] = int(parts[1])
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--limit", type=float, default=15.0, help="seconds the paper's DAG may take")
    ap.add_argument("--no-dvc", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="dag_build_") as tmp:
        project = copy_project(Path(tmp))
        smk = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--quiet", "rules"]
        base_s, _ = timed(smk, project, args.repeat)
        paper_s, out = timed(smk + ["--configfile", "config/paper.yaml"], project, args.repeat)
        counts = job_counts(out)
        print(f"snakemake -n, default config (baseline): {base_s:6.2f} s")
        print(f"snakemake -n --configfile config/paper.yaml: {paper_s:6.2f} s  "
              f"({paper_s / base_s:.2f}x the baseline; limit {args.limit:.0f} s)")
        print(f"{'rule':<18}{'jobs':>8}")
        for rule, n in counts.items():
            print(f"{rule:<18}{n:>8}")
        print(f"{'total':<18}{sum(counts.values()):>8}")
        ok = paper_s <= args.limit
        missing = [r for r in ("download", "prepare_model", "shards", "train", "eval", "aggregate") if r not in counts]
        if missing:
            print(f"note: the default target plans no {', '.join(missing)} job (rule all does not list them)")

        if not args.no_dvc and (project / "dvc.yaml").exists():
            cfg = deep_merge(yaml.safe_load((project / "config/config.yaml").read_text()),
                             yaml.safe_load((project / "config/paper.yaml").read_text()))
            (project / "config/config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            subprocess.run(["git", "init", "-q"], cwd=project, check=True)
            dvc_s, out = timed([sys.executable, "-m", "dvc", "stage", "list"], project, args.repeat)
            stages = [line.split()[0] for line in out.splitlines() if line.strip()]
            per = {}
            for s in stages:
                per[s.split("@")[0]] = per.get(s.split("@")[0], 0) + 1
            print(f"dvc stage list, paper config: {dvc_s:6.2f} s, {len(stages)} stages "
                  + ", ".join(f"{k} {v}" for k, v in per.items()))
    print("OK" if ok else f"TOO SLOW: {paper_s:.1f} s > {args.limit:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
