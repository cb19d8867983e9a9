"""envs/*.yaml (one conda env per group of rules) against pyproject.toml and the code the group runs.

No conda here (and CI has none), so the envs are not built; what can drift is checked instead:
- every requirement of an env is one of pyproject's, with pyproject's version range (torch: a pin inside it);
- every third-party module the group's CLI subcommands import (statically, lazy imports included, optional
  `try: import ... except ImportError` left out) is provided by a package the env lists;
- every pyproject dependency is in some env, except the driver's own tools (snakemake, its plugin, dvc);
- every rule names the env of its group.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from conftest import ROOT
from pausetune.core.fingerprint import closure, module_file
from pausetune.core.report.targets import FIGURE_RULES

# group -> the pausetune modules its rules' subcommands enter (cli dispatches to them)
GROUPS = {
    "data": ["cli", "stages.download", "stages.paragraphs", "stages.prepare_model", "stages.shards", "stages.examples"],
    "train": ["cli", "stages.train"],
    "eval": ["cli", "stages.eval", "stages.rescore", "stages.preflight"],
    # compare, config: no rule, the report env runs them
    "report": ["cli", "stages.aggregate", "stages.figures", "stages.publish", "stages.compare", "stages.config"],
}
RULES = {"data": ["download", "paragraphs", "prepare_model", "shards", "examples"], "train": ["train"],
         "eval": ["eval", "eval_tuned"],
         "report": ["aggregate", "figure_heatmap", "figure_delta", "figure_delta_vs", "figure_profile",
                    "figure_logprob", "figure_logprob_delta", "figure_logprob_delta_vs", "figure_mechanism",
                    "figure_seeds", "figure_distance", "publish"]}
LOOPED = {"eval.smk": {"eval", "eval_tuned"}, "report.smk": {f.name for f in FIGURE_RULES}}  # made by a `rule:` loop
DRIVER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm", "dvc"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {norm(r.name): r for r in map(Requirement, deps)}


def env_requirements(group: str) -> dict[str, Requirement]:
    env = yaml.safe_load((ROOT / "envs" / f"{group}.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "python=3.11" in env["dependencies"] and "pip" in env["dependencies"]
    return {norm(r.name): r for r in map(Requirement, pip)}


def module_imports(mod: str) -> set[tuple[str, str]]:
    """(kind, name) of every import in a module: kind 'rel' for pausetune's own modules, 'abs' otherwise."""
    tree = ast.parse(module_file(f"pausetune.{mod}").read_text())
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(isinstance(h.type, ast.Name) and h.type.id in
                                             ("ImportError", "ModuleNotFoundError") for h in node.handlers):
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            out |= {("abs", a.name.split(".")[0]) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(("rel", (node.module or "").split(".")[0]) if node.level else ("abs", node.module.split(".")[0]))
    return out


def third_party_imports(mods: list[str]) -> set[str]:
    """Third-party top-level imports of the modules' whole closure inside the package (the code fingerprint's)."""
    found = set()
    for m in {c for mod in mods for c in closure(f"pausetune.{mod}")}:
        for kind, name in module_imports(m.removeprefix("pausetune.").removeprefix("pausetune") or "__init__"):
            if kind == "abs" and name != "pausetune" and name not in sys.stdlib_module_names:
                found.add(name)
    return found


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_env_matches_pyproject(group):
    project = pyproject()
    for name, req in env_requirements(group).items():
        assert name in project, f"envs/{group}.yaml: {req} is not a pyproject.toml dependency"
        want = project[name].specifier
        if name == "torch":
            pins = [s for s in req.specifier if s.operator == "=="]
            assert pins and want.contains(pins[0].version), f"envs/{group}.yaml: {req} outside pyproject's {want}"
        else:
            assert req.specifier == want, f"envs/{group}.yaml: {req}, pyproject.toml says {project[name]}"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_env_covers_what_the_group_imports(group):
    dists = packages_distributions()
    have = set(env_requirements(group))
    imported = third_party_imports(GROUPS[group])
    assert ({"altair"} if group == "report" else {"torch", "transformers"}) <= imported  # the scan finds them
    missing = {mod: dists.get(mod, [mod]) for mod in imported if not {norm(d) for d in dists.get(mod, [mod])} & have}
    assert not missing, f"envs/{group}.yaml lacks the packages of these imports: {missing}"


def test_every_dependency_has_an_env():
    used = set().union(*(env_requirements(g) for g in GROUPS))
    missing = set(pyproject()) - used - DRIVER_ONLY
    assert not missing, f"pyproject.toml dependencies in no envs/*.yaml: {sorted(missing)}"


def test_rules_name_their_env():
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    for group, rules in RULES.items():
        for rule in rules:
            m = re.search(rf"^rule {rule}:\n(.*?)(?=^rule |\Z)", text, re.S | re.M)
            looped = next((f for f, names in LOOPED.items() if rule in names), None)
            if not m and looped:  # the rule comes from that file's loop of `rule:`
                m = re.search(r"^    rule:\n(.*?)(?=^rule |\Z)", (ROOT / "workflow" / "rules" / looped).read_text(),
                              re.S | re.M)
            assert m, f"rule {rule} not found"
            assert f'"../../envs/{group}.yaml"' in m.group(1), f"rule {rule} should use envs/{group}.yaml"
