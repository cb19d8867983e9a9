"""The SLURM profile, against a real SLURM: scripts/slurm/start.sh brings up munged, MariaDB, slurmdbd, slurmctld
and slurmd on this machine (installing Debian's packages with apt-get when missing), the tiny pipeline runs with
`snakemake --profile profiles/slurm`, every job is checked in `sacct` and in its SLURM log, and stop.sh stops the
daemons again. Nothing here skips: a machine that cannot run the cluster fails the test with start.sh's error.

The dry-run tests check what the profile asks SLURM for (partitions, accounts, GPUs, groups) without a cluster.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from helpers import job_counts, make_project

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

START = ROOT / "scripts" / "slurm" / "start.sh"
STOP = ROOT / "scripts" / "slurm" / "stop.sh"
BASE_CONFIGS = ["config/config.yaml", "tests/configs/tiny.yaml"]

# The test's own overlay on the tiny config: everything on the tiny model, a small grid, small jobs. train and
# eval ask for one GPU, which the test cluster offers as a fake GRES: the --gpus path of the profile is exercised
# (the jobs themselves see no CUDA device and run on the CPU).
SLURM_CONFIG = {
    "train": {"models": ["tiny"], "max_steps": 2, "warmup_steps": 0, "save_every": 1,
              "resources": {"mem_mb": 1500, "runtime": 10, "gpu": 1}},
    "eval": {"models": ["tiny"], "variants": ["pause-tuned"], "tasks": ["single"], "lengths": [1000],
             "depths": [0, 100], "seeds": [0], "resources": {"mem_mb": 1500, "runtime": 10, "gpu": 1}},
}
# Profile overlay for the one-node test cluster: quick status polling, logs kept for the checks below.
TEST_PROFILE = {
    "jobs": 4,
    "latency-wait": 5,
    "retries": 0,
    "seconds-between-status-checks": 2,
    "slurm-init-seconds-before-status-checks": 2,
    "slurm-keep-successful-logs": True,
}
SLURM_ENV = {
    "PAUSETUNE_SLURM_PARTITION": "debug",
    "PAUSETUNE_SLURM_ACCOUNT": "pausetune",
    "PAUSETUNE_SLURM_MAX_MEM_MB": "1500",
    "PAUSETUNE_SLURM_MAX_CPUS": "1",  # one CPU per job: the node's two run two jobs at once
}
TEST_GPUS = 2  # fake GPUs of the test node: both training jobs at once


def _env(extra: dict | None = None, drop=()) -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:/usr/sbin:/sbin:{os.environ['PATH']}")
    for k in list(env):
        if k.startswith("PAUSETUNE_SLURM_") or k in drop:
            del env[k]
    env.update(extra or {})
    return env


def _run(cmd, cwd, env, timeout=1800) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def targets(project: Path) -> list[str]:
    """`all` and, explicitly, the grid's tables and figures (they pull in cells, checkpoints and data)."""
    from pausetune.core.config import load_config
    from pausetune.core.report.targets import report_targets

    return ["all", *report_targets(load_config([str(project / c) for c in BASE_CONFIGS + ["slurm.yaml"]]))]


def slurm_project(dest: Path) -> Path:
    make_project(dest)
    shutil.copytree(ROOT / "profiles", dest / "profiles")
    (dest / "slurm.yaml").write_text(yaml.safe_dump(SLURM_CONFIG))
    (dest / "profiles" / "slurm-test").mkdir()
    (dest / "profiles" / "slurm-test" / "config.yaml").write_text(yaml.safe_dump(TEST_PROFILE))
    return dest


def dry_run_jobs(project: Path, env: dict, *args: str) -> tuple[dict, list[dict]]:
    """(job counts per rule, [{rule, resources}]) of `snakemake -n` with the given args."""
    proc = _run([sys.executable, "-m", "snakemake", "-n", *args], project, env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    jobs, rule, threads = [], None, "1"
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\S+):$", line.strip())
        if m:
            rule, threads = m.group(1), "1"
        elif line.strip().startswith("threads:") and rule:
            threads = line.split(":", 1)[1].strip()
        elif line.strip().startswith("resources:") and rule:
            res = dict(kv.split("=", 1) for kv in line.strip()[len("resources: "):].split(", "))
            jobs.append({"rule": rule, "resources": res, "threads": threads})
            rule = None
    return job_counts(out), jobs


def resources_of(jobs: list[dict], rule: str) -> list[dict]:
    """Each job's resources, plus its threads (the plugin's --cpus-per-task) as 'threads'."""
    return [dict(j["resources"], threads=j["threads"]) for j in jobs if j["rule"] == rule]


# ------------------------------------------------------------------------------------------ dry runs (no cluster)

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return slurm_project(tmp_path_factory.mktemp("slurm_project"))


def test_profile_dry_run_resources(project):
    """What the profile asks for, per rule: partitions and account from the environment, CPUs and memory."""
    env = _env({"PAUSETUNE_SLURM_PARTITION": "cpu", "PAUSETUNE_SLURM_GPU_PARTITION": "gpu",
                "PAUSETUNE_SLURM_ACCOUNT": "lab42"})
    counts, jobs = dry_run_jobs(project, env, "--profile", "profiles/slurm", "--configfile", *BASE_CONFIGS,
                                "slurm.yaml", "--", *targets(project))
    assert counts.get("shards") == 2 and counts.get("train", 0) >= 1 and counts.get("eval_tuned") == 1, counts
    for res in resources_of(jobs, "shards"):
        assert res["slurm_partition"] == "cpu" and res["slurm_account"] == "lab42", res
        assert res["mem_mb"] == "8000" and res["threads"] == "4" and res["runtime"] == "60", res
    for res in resources_of(jobs, "download") + resources_of(jobs, "paragraphs"):
        assert res["slurm_partition"] == "cpu" and int(res["mem_mb"]) <= 4000, res
    for res in resources_of(jobs, "train"):  # mem, runtime, gpu from config train.resources; where from the env
        assert res["slurm_partition"] == "gpu" and res["gpu"] == "1" and res["mem_mb"] == "1500", res
        assert res["threads"] == "8", res
    evals = resources_of(jobs, "eval") + resources_of(jobs, "eval_tuned")  # both eval rules (here: the tuned one)
    assert evals, counts
    for res in evals:  # likewise from config eval.resources
        assert res["slurm_partition"] == "gpu" and res["gpu"] == "1" and res["mem_mb"] == "1500", res
        assert res["threads"] == "8", res
    for rule in ("aggregate", "figure_heatmap"):
        for res in resources_of(jobs, rule):
            assert res["slurm_partition"] == "cpu" and "gpu" not in res, res


def test_profile_without_environment_leaves_partition_and_account_to_slurm(project):
    counts, jobs = dry_run_jobs(project, _env(), "--profile", "profiles/slurm", "--configfile", *BASE_CONFIGS,
                                "slurm.yaml", "--", *targets(project))
    assert jobs, counts
    for j in jobs:
        assert "slurm_partition" not in j["resources"] and "slurm_account" not in j["resources"], j


# ------------------------------------------------------------------------------------------ the live cluster

def _free_base_port() -> int:
    """A base port with the next three free too (slurmctld, slurmd, slurmdbd, MariaDB): parallel runs don't clash."""
    for base in range(21000 + os.getpid() % 500 * 40, 64000, 40):
        try:
            socks = []
            for p in range(base, base + 4):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free ports")


LOCK = Path("/run/lock/pausetune-slurm-test.lock")


@pytest.fixture(scope="module")
def machine_lock():
    """One test cluster per machine at a time: slurmd's configless link /run/slurm/conf (where `srun` inside a
    job finds its cluster) and munge's default socket are machine-wide, so a second cluster would steal them."""
    import fcntl

    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        t0 = time.time()
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() - t0 > 1500:
                    pytest.fail(f"another SLURM test cluster held {LOCK} for 25 minutes", pytrace=False)
                time.sleep(5)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield time.time() - t0
        fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, machine_lock):
    state = tmp_path_factory.mktemp("slurm_state")
    env = _env({"PAUSETUNE_SLURM_PORT": str(_free_base_port()), "PAUSETUNE_SLURM_GPUS": str(TEST_GPUS)})
    t0 = time.time()
    proc = _run(["bash", str(START), str(state)], ROOT, env, timeout=1500)
    if proc.returncode != 0:
        _run(["bash", str(STOP), str(state)], ROOT, env, timeout=120)
        pytest.fail(f"scripts/slurm/start.sh failed (rc {proc.returncode}) after {time.time() - t0:.0f}s:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    env["SLURM_CONF"] = str(state / "etc" / "slurm.conf")
    info = {"dir": state, "env": env, "start_s": time.time() - t0, "start_out": proc.stdout, "waited_s": machine_lock}
    yield info
    _run(["bash", str(STOP), str(state)], ROOT, env, timeout=120)


def test_cluster_is_up_with_accounting(cluster):
    env = cluster["env"]
    sinfo = _run(["sinfo", "-h", "-o", "%P %T %G"], ROOT, env, timeout=60)
    assert sinfo.returncode == 0 and re.search(r"debug\*? (idle|mixed)", sinfo.stdout), sinfo.stdout + sinfo.stderr
    assert f"gpu:{TEST_GPUS}" in sinfo.stdout
    sacct = _run(["sacct", "-X", "-n"], ROOT, env, timeout=60)
    assert sacct.returncode == 0, sacct.stderr  # accounting answers (not "accounting storage is disabled")
    again = _run(["bash", str(START), str(cluster["dir"])], ROOT, env, timeout=120)
    assert again.returncode == 0 and "ready" in again.stdout, again.stdout + again.stderr
    assert "up on" not in again.stdout, "start.sh restarted daemons that were running"


# squeue reasons that never resolve on a one-node cluster: a job that asks for more than the node has
STUCK = ("PartitionConfig", "ReqNodeNotAvail", "BadConstraints", "PartitionNodeLimit", "Resources unavailable")


def _run_watched(cmd, cwd, env, timeout) -> subprocess.CompletedProcess:
    """Run snakemake; fail at once (not at the timeout) when SLURM says a job can never start here."""
    log = Path(cwd) / "snakemake-run.log"
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
        end = time.time() + timeout
        while p.poll() is None:
            time.sleep(5)
            q = _run(["squeue", "-h", "-o", "%i|%r|%C|%m|%b"], cwd, env, timeout=60).stdout
            stuck = [line for line in q.splitlines() if any(r in line for r in STUCK)]
            if stuck or time.time() > end:
                p.terminate()
                p.wait(60)
                _run(["scancel", "--user", "root"], cwd, env, timeout=60)
                why = f"jobs that cannot start (id|reason|cpus|mem|gres): {stuck}" if stuck else f"timeout {timeout}s"
                raise AssertionError(f"{why}\n{log.read_text()[-6000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, log.read_text(), "")


def _sacct(env, run_id) -> list[dict]:
    proc = _run(["sacct", "-X", "-n", "-P", "--name", run_id, "-o", "JobID,State,ExitCode,Comment,AllocTRES,Partition,Account"],
                ROOT, env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    keys = ["jobid", "state", "exit", "comment", "tres", "partition", "account"]
    return [dict(zip(keys, line.split("|"))) for line in proc.stdout.splitlines() if line.strip()]


def test_tiny_pipeline_through_slurm(cluster, tmp_path_factory):
    project = slurm_project(tmp_path_factory.mktemp("slurm_run"))
    env = dict(cluster["env"], **SLURM_ENV)
    args = ["--profile", "profiles/slurm", "--profile", "profiles/slurm-test", "--configfile", *BASE_CONFIGS,
            "slurm.yaml"]
    want = targets(project)
    counts, _ = dry_run_jobs(project, env, *args, "--", *want)
    t0 = time.time()
    proc = _run_watched([sys.executable, "-m", "snakemake", *args, "--", *want], project, env, timeout=1200)
    wall = time.time() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake --profile profiles/slurm failed after {wall:.0f}s:\n{out[-8000:]}"
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)

    # Every planned job ran as a SLURM job, completed, recorded by the accounting database.
    rows = _sacct(env, run_id)
    assert rows and all(r["state"] == "COMPLETED" and r["exit"] == "0:0" for r in rows), rows
    assert all(r["partition"] == "debug" and r["account"] == "pausetune" for r in rows), rows
    groups = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())["groups"]
    by_name: dict[str, int] = {}  # SLURM jobs per rule, or per group for grouped rules (comment rule_<group>_...)
    for r in rows:
        m = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", r["comment"])
        assert m, r
        name = next((g for g in set(groups.values()) if m.group(1).startswith(g + "_")), m.group(1))
        by_name[name] = by_name.get(name, 0) + 1
    planned = {k: v for k, v in counts.items() if k != "all"}
    for rule, n in planned.items():
        if rule in groups:
            assert by_name.get(groups[rule], 0) >= 1, (rule, by_name)
        else:
            assert by_name.get(rule) == n, (rule, n, by_name)
    assert set(by_name) <= set(planned) | set(groups.values()), by_name
    if "download" in planned:  # the data stages: one SLURM job
        assert by_name["data"] == 1, by_name
    if "aggregate" in planned:  # the tables, all figures and the results page: one SLURM job
        assert by_name["report"] == 1, by_name
    blocks = planned.get("eval", 0) + planned.get("eval_tuned", 0)
    if blocks:  # blocks of both eval rules bundled group-components at a time
        assert by_name["eval"] <= -(-blocks // 16), by_name
    for r in rows:  # train and eval asked for a GPU (config train.resources.gpu) and got the node's one
        if r["comment"].startswith(("rule_train", "rule_eval")):
            assert "gres/gpu=1" in r["tres"], r

    # Outputs, and each job's SLURM log.
    for t in want[1:] + ["data/shards/tiny/pause/manifest.json", "results/checkpoints/tiny/pause/tseed0/manifest.json"]:
        assert (project / t).exists(), t
    logs = list((project / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(logs) == len(rows), (len(logs), len(rows))
    for log in logs:
        text = log.read_text()
        assert re.search(r"\d+ of \d+ steps \(100%\) done", text), f"{log}:\n{text[-2000:]}"
    jobids = {r["jobid"] for r in rows}
    assert {p.stem for p in logs} == jobids

    # Nothing left to do, as far as the profile is concerned.
    again, _ = dry_run_jobs(project, env, *args, "--", *want)
    assert not {k for k in again if k != "all"}, again
    print(f"\nslurm: waited {cluster['waited_s']:.0f}s for the machine, start {cluster['start_s']:.0f}s, pipeline {wall:.0f}s, {len(rows)} SLURM jobs {by_name}")


def test_stop_stops_the_daemons(cluster):
    """stop.sh stops every daemon start.sh started; start.sh then brings the cluster back (so the module's other
    tests, in whatever order they run, find it up)."""
    state, env = cluster["dir"], cluster["env"]
    pids = {p.name: int(p.read_text()) for p in (state / "pids").iterdir()}
    assert {"slurmctld", "slurmd"} <= set(pids), pids
    proc = _run(["bash", str(STOP), str(state)], ROOT, env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name, pid in pids.items():
        if name == "munged" and "left running" in proc.stdout:
            continue
        assert not Path(f"/proc/{pid}").exists(), f"{name} ({pid}) still running:\n{proc.stdout}"
    again = _run(["bash", str(START), str(state)], ROOT, env, timeout=600)
    assert again.returncode == 0 and "ready" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
