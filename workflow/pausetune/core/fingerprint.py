"""Code identity: the package source a stage runs (its import closure inside pausetune), hashed.

A result made by code that no longer exists must never be served as current. Each stage records the sha256 of the
files it imports (statically: top-level and lazy imports alike, read from the source, nothing imported), so an
edit to scoring.py changes every cell's code fingerprint while an edit to figures.py changes no cell. The same
closure is what dvc.yaml lists as deps and what a Snakemake rule's code input fingerprints, so all three agree.

A file is hashed as its syntax tree without docstrings (comments are not in the tree, line numbers are left out):
tidying a comment or a docstring keeps every fingerprint, so no cell or checkpoint is recomputed for it, while any
change to what the code does changes the hash. Snakemake sees that hash, not the files: each rule's code input is
a stamp holding its stage's fingerprint (`code_stamp`), so a docstring edit leaves `snakemake -n` with nothing to
do. DVC hashes the files themselves (it has no hook to run before it compares), so there a docstring edit still
makes the stages that run the file stale.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "pausetune"
PKG_DIR = Path(__file__).resolve().parents[1]  # workflow/pausetune
REPO_DIR = PKG_DIR.parents[1]


def module_file(module: str, pkg: Path = PKG_DIR) -> Path | None:
    """pausetune.core.io -> .../core/io.py (a package -> its __init__.py); None outside the package.

    `pkg` is the package folder read: this one, or a project's (what its Snakemake jobs will run)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = Path(pkg).joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_package(module: str, pkg: Path = PKG_DIR) -> bool:
    f = module_file(module, pkg)
    return f is not None and f.name == "__init__.py"


@lru_cache(maxsize=None)
def _imports(module: str, pkg_dir: Path, mtime_ns: int) -> tuple[str, ...]:
    """The package modules `module` imports anywhere in its source (mtime in the key: edits are seen)."""
    f = module_file(module, pkg_dir)
    tree = ast.parse(f.read_text(encoding="utf-8"))
    pkg = module if _is_package(module, pkg_dir) else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            out.add(target)
            for a in node.names:  # `from ..core import engine`: a submodule, not a name
                if module_file(f"{target}.{a.name}", pkg_dir) is not None:
                    out.add(f"{target}.{a.name}")
    return tuple(sorted(m for m in out if module_file(m, pkg_dir) is not None))


def closure(module: str, exclude: tuple[str, ...] = (), pkg: Path = PKG_DIR) -> list[str]:
    """Every package module that running `module` imports, itself and the packages' __init__ files included."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or m in exclude:
            continue
        seen.add(m)
        parts = m.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append(".".join(parts[:i]))
        f = module_file(m, pkg)
        todo.extend(_imports(m, Path(pkg), f.stat().st_mtime_ns))
    return sorted(seen)


def closure_files(module: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """The closure as repository-relative paths (what Snakemake inputs and dvc.yaml deps list)."""
    return sorted(str(module_file(m).relative_to(REPO_DIR)) for m in closure(module, exclude))


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@lru_cache(maxsize=None)
def code_hash(path: str, mtime_ns: int) -> str:
    """sha256 of a source file's code: its syntax tree without docstrings, comments or positions."""
    tree = _strip_docstrings(ast.parse(Path(path).read_text(encoding="utf-8")))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def fingerprint(module: str, exclude: tuple[str, ...] = (), pkg: Path = PKG_DIR) -> str:
    """sha256 over (path, code hash) of the closure: changes exactly when the code `module` runs changes."""
    h = hashlib.sha256()
    for m in closure(module, exclude, pkg):
        f = module_file(m, pkg)
        h.update(f"{f.relative_to(pkg).as_posix()}\0{code_hash(str(f), f.stat().st_mtime_ns)}\n".encode())
    return h.hexdigest()


def code_stamp(module: str, path: str | Path, pkg: Path) -> str:
    """`path`, holding the fingerprint of `module` in the package folder `pkg` (the project's, which its jobs run),
    rewritten only when that changes: the code input of a rule.

    Snakemake reruns a job for an input newer than its outputs only if the input's content (checksum) differs from
    what the job last read. A docstring or comment edit keeps the fingerprint, so the stamp stays as it is and
    nothing reruns; any change to what the code does rewrites it and reruns exactly the rules whose stage runs it.
    """
    from .io import write_text

    want = fingerprint(module, pkg=Path(pkg)) + "\n"
    path = Path(path)
    try:
        same = path.read_text(encoding="utf-8") == want
    except (OSError, UnicodeDecodeError):
        same = False
    if not same:
        write_text(path, want)
    return str(path)


def code_record(module: str, exclude: tuple[str, ...] = ()) -> dict:
    """What a result stores about the code that made it."""
    return {"module": module, "sha256": fingerprint(module, exclude), "files": len(closure(module, exclude))}


def package_versions() -> dict:
    """The versions of the packages that compute a result (None: not installed), for its manifest."""
    import sys
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("pausetune", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets",
                "safetensors", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out
