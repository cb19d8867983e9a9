"""The results page: every number comes from results/tables, and a changed cell changes the page."""
import json
import re
import shutil
from pathlib import Path

from pausetune.stages.aggregate import aggregate
from pausetune.core.report.page import verdict

from conftest import DEFAULT_CONFIG, run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "cells"


def publish(tmp_path: Path, cells_dir: Path, name: str) -> str:
    tables = tmp_path / f"tables_{name}"
    aggregate(sorted(str(p) for p in cells_dir.rglob("depth*.json")), tables, b=200, seed=0)
    page = tmp_path / f"{name}.md"
    run_cli("publish", "--config", str(DEFAULT_CONFIG), "--config-json",
            json.dumps({"publish": {"figures_dir": "figs", "tables_dir": "docs_tables"}}),  # under the cwd
            "--tables", str(tables), "--benchmarks", str(tmp_path / "nobench"), "--run-info", str(tmp_path / "none"),
            "--output", str(page), cwd=tmp_path)
    return page.read_text(), tables


def test_page_numbers_come_from_tables(tmp_path):
    text, tables = publish(tmp_path, FIXTURE, "a")
    import csv

    summary = list(csv.DictReader(open(tables / "summary.csv")))
    deltas = list(csv.DictReader(open(tables / "deltas.csv")))
    ushape = list(csv.DictReader(open(tables / "u_shape.csv")))
    assert ushape  # the fixture's depths 0/50/100 make a U: its section is on the page
    effective = list(csv.DictReader(open(tables / "effective_length.csv")))
    assert effective
    table_numbers = set()
    for r in summary + deltas + ushape + effective:
        for v in r.values():
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue
            table_numbers |= {f"{x:.2f}", f"{x:+.1f}", f"{x:.1f}", f"{100 * x:.1f}", f"{x:.2g}", f"{x:.0f}", str(v)}
    rows = [line for line in text.splitlines() if line.startswith("| smollm2")]
    assert rows, text
    for line in rows:
        for token in re.findall(r"[+-]?\d+\.\d+|\b\d+\b", line):
            assert token in table_numbers, (token, line)
    assert "+10.61%" in text and "+3.57%" in text


def test_changed_cell_changes_page(tmp_path):
    before, _ = publish(tmp_path, FIXTURE, "before")
    cells = tmp_path / "cells"
    shutil.copytree(FIXTURE, cells)
    f = next(cells.rglob("pause-tuned/tseed0/single/seed0/len1000/depth50.json"))
    cell = json.loads(f.read_text())
    cell["score"], cell["recall"], cell["exact"] = (1.0, 0.0, False) if cell["score"] > 5 else (10.0, 1.0, True)
    f.write_text(json.dumps(cell))
    after, _ = publish(tmp_path, cells, "after")
    assert before != after
    row = lambda t: [l for l in t.splitlines() if l.startswith("| smollm2 | single | pause-tuned |")][0]
    assert row(before) != row(after)


def test_figure_order_and_what_was_not_recorded(tmp_path):
    """Snakemake passes the grid's figures, DVC a glob: the page is the same; runs without Snakemake's run info and
    benchmark files say so."""
    _, tables = publish(tmp_path, FIXTURE, "a")
    figs = []
    for task in ("single", "multi"):
        for rel in ([f"heatmap/smollm2/{task}/{v}" for v in ("baseline", "pause-prompt", "pause-tuned", "plain-tuned")]
                    + [f"delta/smollm2/{task}/{v}" for v in ("pause-prompt", "pause-tuned", "plain-tuned",
                                                             "pause-tuned_vs_plain-tuned")]
                    + [f"length/smollm2/{task}", f"depth/smollm2/{task}"]):
            f = tmp_path / "results" / "figures" / f"{rel}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(rel.encode())
            figs.append(str(f))
    pages = []
    for order in (figs, sorted(figs), list(reversed(figs))):
        page = tmp_path / "page.md"
        run_cli("publish", "--config", str(DEFAULT_CONFIG), "--config-json",
                json.dumps({"publish": {"figures_dir": "figs"}, "eval": {"tasks": ["single", "multi"]}}),
                "--tables", str(tables), "--benchmarks", str(tmp_path / "nobench"),
                "--run-info", str(tmp_path / "none"), "--output", str(page), "--figures", *order, cwd=tmp_path)
        pages.append(page.read_text())
    assert pages[0] == pages[1] == pages[2]
    shown = re.findall(r"!\[([^\]]+)\]", pages[0])
    assert shown == [" / ".join(Path(f).relative_to(tmp_path / "results" / "figures").with_suffix("").parts)
                     for f in figs], shown
    assert "- Command: not recorded" in pages[0]
    assert f"- Wall time per stage: not measured (no Snakemake benchmark files under {tmp_path / 'nobench'}/)" \
        in pages[0]


def test_verdict_rules():
    """Recall in points decides on its hierarchical interval; the exact test is quoted beside it; where nothing is
    detected the design's minimum detectable effect is, a lower bound with one training run; a degenerate bootstrap
    is named."""
    base = {"mean_variant": "6", "mean_reference": "5", "n": "40", "pct": "20", "pct_ci_low": "5", "pct_ci_high": "35",
            "recall_variant_pp": "60", "recall_reference_pp": "45", "recall_diff_pp": "15", "exact_wins": "7",
            "exact_losses": "1", "p_exact": "0.0703125", "p_holm": "0.2", "runs": "3", "mde_pp": "18.4",
            "bootstrap_degenerate": "False", "primary": "False"}
    v = verdict({**base, "recall_diff_pp_ci_low": "4", "recall_diff_pp_ci_high": "26"}, "x")
    assert "improvement whose 95% interval excludes zero" in v and "+15.0 [+4.0, +26.0] pp recall" in v, v
    assert "7 wins vs 1 losses, p = 0.07 (Holm 0.2)" in v and "3 training runs" in v and "±" not in v, v
    v = verdict({**base, "recall_diff_pp": "-15", "recall_diff_pp_ci_low": "-26", "recall_diff_pp_ci_high": "-4"}, "x")
    assert "degradation" in v, v
    v = verdict({**base, "recall_diff_pp_ci_low": "-4", "recall_diff_pp_ci_high": "30"}, "x")
    assert "no detectable effect" in v and "about ±18.4 pp" in v and "runs, points and cells" in v, v
    v = verdict({**base, "runs": "1", "recall_diff_pp_ci_low": "-4", "recall_diff_pp_ci_high": "30"}, "x")
    assert "1 training run;" in v and "not measured, so the true figure is larger" in v, v
    v = verdict({**base, "bootstrap_degenerate": "True", "recall_diff_pp_ci_low": "0", "recall_diff_pp_ci_high": "30"},
                "x")
    assert "ends at exactly 0 by construction: read the exact test" in v, v
    v = verdict({**base, "primary": "True", "recall_diff_pp_ci_low": "4", "recall_diff_pp_ci_high": "26"}, "x")
    assert "Holm" not in v, v  # the primary endpoint is tested alone


def test_stage_times_and_essays(tmp_path):
    """Wall and CPU time per stage from Snakemake's benchmark files; which essays trained and which were haystack."""
    from pausetune.core.report.provenance import essays_used, stage_times

    bench = tmp_path / "benchmarks"
    head = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, s, rss, cpu in (("eval/m/baseline/seed0.tsv", 100.5, 2048, 190.0), ("eval/m/baseline/seed1.tsv", 99.5,
                             1024, 180.0), ("train/m/pause.tsv", 60.0, 3072, 110.0), ("download/pg.tsv", 1.0, 100, 0.5)):
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(head + f"{s}\t0:01:40\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n")
    assert stage_times(bench) == [("download", 1, 1.0, 0.5, 100.0), ("train", 1, 60.0, 110.0, 3072.0),
                                  ("eval", 2, 200.0, 370.0, 2048.0)]
    m = tmp_path / "manifest.json"
    m.write_text(json.dumps({"holdout_haystack": True, "train_essays": ["pg/a", "pg/b"], "validation_essays": ["pg/c"],
                             "haystack_essays": ["pg/d"]}))
    line, = essays_used([str(m)])
    assert "2 training and 1 validation essays; haystack 1 essays, 0 of them also trained on (holdout on)" in line
    assert "Haystack: pg/d." in line and "Training: pg/a, pg/b." in line
    m.write_text(json.dumps({"holdout_haystack": False, "train_essays": ["pg/a", "pg/d"], "validation_essays": [],
                             "haystack_essays": ["pg/a", "pg/d"]}))
    assert "2 of them also trained on (holdout off" in essays_used([str(m)])[0]


def test_where_the_baseline_fails(tmp_path):
    """The lost-in-the-middle line: the (length, depth) points the baseline misses, each variant's mean there."""
    import pandas as pd

    cells = tmp_path / "cells"
    shutil.copytree(FIXTURE, cells)
    for f in cells.rglob("baseline/*/*/*/depth*.json"):
        cell = json.loads(f.read_text())
        if cell["depth"] != 50:
            cell["score"], cell["recall"], cell["exact"] = 10.0, 1.0, True
            f.write_text(json.dumps(cell))
    text, tables = publish(tmp_path, cells, "hard")
    line = next(l for l in text.splitlines() if l.startswith("- Where the baseline misses"))
    assert "(2 of 6 length x depth points; 1000 tokens: depths 50; 2000 tokens: depths 50)" in line, line
    df = pd.read_parquet(tables / "cells.parquet")
    mid = df[df["depth"] == 50].groupby("variant")["score"].mean()
    for v in ("baseline", "pause-prompt", "pause-tuned"):
        assert f"{v} {mid[v]:.2f}" in line, (v, line)


def test_reading_says_when_tuning_itself_hurts(tmp_path):
    cells = tmp_path / "cells"
    shutil.copytree(FIXTURE, cells)
    for f in cells.rglob("depth*.json"):
        cell = json.loads(f.read_text())
        tuned = cell["variant"] in ("pause-tuned", "plain-tuned")
        cell["score"], cell["recall"], cell["exact"] = (1.0, 0.0, False) if tuned else (10.0, 1.0, True)
        f.write_text(json.dumps(cell))
    text, _ = publish(tmp_path, cells, "tuning_hurts")
    assert "- Both tuned variants score below the untuned baseline" in text
    before, _ = publish(tmp_path, FIXTURE, "fixture")
    assert "Both tuned variants score below" not in before


def test_mechanism_section_reads_measure_tables(tmp_path):
    """Cells with measures: the page shows the measure tables' numbers with their intervals; without: no section."""
    import csv

    from test_aggregate import measured_cells

    measured_cells(tmp_path)
    text, tables = publish(tmp_path, tmp_path / "cells", "m")
    assert "## Mechanism: answer likelihood and attention" in text
    meas = list(csv.DictReader(open(tables / "measures.csv")))
    md = list(csv.DictReader(open(tables / "measure_deltas.csv")))
    numbers = set()
    for r in meas + md:
        for v in r.values():
            try:
                x = float(v)
            except (TypeError, ValueError):
                continue
            numbers |= {f"{x:.2f}", f"{x:.3f}", f"{x:.4f}", f"{x:+.2f}", f"{x:+.4f}", f"{x:.0f}", str(v)}
    section = text.split("## Mechanism")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| smollm2")]
    assert len(rows) == 3  # plain-tuned has no measures
    for line in rows + [line for line in section.splitlines() if line.startswith("- ")]:
        for token in re.findall(r"[+-]?\d+\.\d+", line.split(" matched cells")[0]):
            assert token in numbers or token in ("40", "60"), (token, line)
    pt = next(r for r in rows if "| pause-tuned |" in r)
    assert "| -4.25 | +0.75 [" in pt
    assert "Pause-tuning (pause-tuned vs baseline), answer log-prob: +0.75 [" in section
    assert "pause-tuned vs pause-prompt), attention on pause tokens" in section
    assert "- baseline: needle attention share at depths 40-60% 0.0350 against" in section
    plain, _ = publish(tmp_path, FIXTURE, "plain")
    assert "## Mechanism" not in plain


def test_answer_kinds_and_tables_beside_the_page(tmp_path):
    """The failure-mode count per variant, the baseline where it is perfect, and the small tables copied."""
    from pausetune.core.report.page import answer_kind

    prompt = "Keep your response short and direct. Don't give information outside the document or repeat your findings"
    assert answer_kind("Dolores Park", 1.0, 5, 32, prompt) == "answered"
    assert answer_kind("to give information outside the document", 0.0, 9, 32, prompt) == "copies the prompt"
    assert answer_kind("and so the startup grew until every founder had " * 3, 0.0, 32, 32, prompt) == \
        "runs to the token limit"
    assert answer_kind("Paris.", 0.0, 3, 32, prompt) == "other miss"
    cells = tmp_path / "cells"
    shutil.copytree(FIXTURE, cells)
    for f in cells.rglob("depth*.json"):
        cell = json.loads(f.read_text())
        if cell["variant"] == "baseline":
            cell["score"], cell["recall"], cell["exact"] = 10.0, 1.0, True
        elif cell["variant"] == "plain-tuned":
            cell.update(score=1.0, recall=0.0, exact=False, answer="Don't give information outside the document")
        f.write_text(json.dumps(cell))
    text, tables = publish(tmp_path, cells, "kinds")
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line for line in text.splitlines()
            if line.startswith("| single |")}
    plain = next(v for k, v in rows.items() if k[1] == "plain-tuned")
    n = int(plain.strip("|").split("|")[2])
    assert f"| {n} (100%) | 0 (0%) | 0 (0%) |" in plain.replace(f"| {n} | 0 (0%) ", "| "), plain
    assert "- single: the untuned baseline scores 10 in every cell at" in text
    copied = sorted(p.name for p in (tmp_path / "docs_tables").iterdir())
    assert {"summary.csv", "deltas.csv", "depth_profile.csv", "length_profile.csv", "manifest.json"} <= set(copied)
    assert (tmp_path / "docs_tables" / "summary.csv").read_bytes() == (tables / "summary.csv").read_bytes()


def test_recipe_against_the_authors_departures_marked():
    import yaml

    from pausetune.core.config import deep_merge, validate
    from pausetune.core.report.provenance import recipe_section

    cfg = validate(deep_merge(yaml.safe_load(DEFAULT_CONFIG.read_text()), yaml.safe_load(
        (DEFAULT_CONFIG.parent / "study.yaml").read_text())))
    text = "\n".join(recipe_section(cfg))
    assert "| objective | retrieval | retrieval |" in text and "| lr | 0.0002 | 0.0002 |" in text
    assert "| grad_accum | **2** | 4 |" in text and "| context tokens | **256-512** |" in text
    assert "| quantization | **none** | nf4 |" in text


def test_committed_publish_folders_are_publishs(monkeypatch):
    """The study pages' figure and table folders in git carry the output marker: a rerun of publish replaces them
    (Snakemake empties them first), and nothing committed needs a folder written before the marker to count."""
    from pausetune.core.config import load_config
    from pausetune.core.io import OUTPUT_MARKER
    from pausetune.core.report.targets import check_output_dirs, output_dirs

    root = DEFAULT_CONFIG.parents[1]
    monkeypatch.chdir(root)  # the folders are relative to the project
    for overlay in ("study.yaml", "study-lm.yaml"):
        config = load_config([str(DEFAULT_CONFIG), str(root / "config" / overlay)])
        check_output_dirs(config)
        for folder in output_dirs(config).values():
            assert not Path(folder).exists() or (Path(folder) / OUTPUT_MARKER).is_file(), folder


def test_primary_section_first_with_runs_and_wall_time():
    """The primary endpoint's section: what was declared, its verdict, each training run's own contrast and the
    spread between runs, the run's wall time; without a primary row it says every contrast is secondary."""
    from pausetune.core.report.page import primary_section

    row = {"model": "smollm2", "task": "bank", "variant": "pause-tuned", "reference": "plain-tuned", "primary": "True",
           "n": "66", "pct": "12", "recall_variant_pp": "60", "recall_reference_pp": "50", "recall_diff_pp": "10",
           "recall_diff_pp_ci_low": "-2", "recall_diff_pp_ci_high": "21", "exact_wins": "9", "exact_losses": "3",
           "p_exact": "0.146", "p_holm": "0.146", "runs": "2", "sigma_runs_pp": "7.5", "mde_pp": "25",
           "bootstrap_degenerate": "False"}
    seeds = [{"model": "smollm2", "task": "bank", "variant": "pause-tuned", "reference": "plain-tuned",
              "train_seed": s, "n": "33", "recall_diff_pp": d} for s, d in (("0", "15.2"), ("1", "4.8"))]
    text = "\n".join(primary_section([row], seeds, {"report": {"primary": None}}, wall_s=5400))
    assert text.startswith("## Primary result") and "90 min" in text
    assert "default endpoint (config `report.primary` unset)" in text and "task `bank`" in text
    assert "+10.0 [-2.0, +21.0] pp recall" in text and "no detectable effect" in text and "±25.0 pp" in text
    assert "seed 0 +15.2 pp (n = 33), seed 1 +4.8 pp (n = 33)" in text and "between runs 7.5 pp" in text
    assert "2 of 2 runs favour pause-tuned, 0 favour plain-tuned." in text
    declared = {"report": {"primary": {"variant": "pause-tuned", "reference": "plain-tuned", "task": "bank",
                                       "lengths": [8000]}}}
    assert "config `report.primary`" in "\n".join(primary_section([row], seeds, declared)) and \
        "lengths 8000" in "\n".join(primary_section([row], seeds, declared))
    none = "\n".join(primary_section([{**row, "primary": "False"}], seeds, {"report": {"primary": None}}))
    assert "No primary endpoint in this grid" in none and "secondary" in none


def test_transfer_section_sets_the_needle_kinds_side_by_side():
    """In-template, out-of-template and low-overlap tasks as columns, each variant's recall and each tuned contrast
    per task from the tables; no section for a grid without a transfer bank."""
    from pausetune.core.report.page import transfer_section

    config = {"eval": {"tasks": ["bank", "ood", "assoc", "single"]},
              "tasks": {"bank": {"bank": True}, "ood": {"bank": "eval_ood"}, "assoc": {"bank": "associations"},
                        "single": {}}}
    summary = [{"kind": "overall", "model": "m", "task": t, "variant": v, "mean_recall": str(r), "n": "12"}
               for t, rs in {"bank": (0.5, 0.9), "ood": (0.4, 0.45), "assoc": (0.1, 0.2), "single": (0.3, 0.3)}.items()
               for v, r in zip(("plain-tuned", "pause-tuned"), rs)]
    deltas = [{"model": "m", "task": "ood", "variant": "pause-tuned", "reference": "plain-tuned", "n": "12",
               "recall_diff_pp": "5.0", "recall_diff_pp_ci_low": "-3.0", "recall_diff_pp_ci_high": "12.5"}]
    text = "\n".join(transfer_section(summary, deltas, config))
    assert "| model | variant | bank (in-template) | ood (out-of-template) | assoc (low-overlap) | single (fixed needle) |" \
        in text
    assert "| m | pause-tuned | 90.0 (12) | 45.0 (12) | 20.0 (12) | 30.0 (12) |" in text
    assert text.index("| m | pause-tuned |") < text.index("| m | plain-tuned |")  # design order (core.design)
    assert "| m | pause-tuned vs plain-tuned | – | +5.0 [-3.0, +12.5] (n 12) | – | – |" in text
    config["tasks"] = {t: {"bank": True} for t in config["eval"]["tasks"]}
    assert transfer_section(summary, deltas, config) == []
