"""Atomic file output and one-line errors.

Every output goes to a temp file in the same folder and is renamed into place, so a killed job never
leaves a half-written file that Snakemake or DVC would take for a finished one.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

# When this process started (the CLI imports this module first): a temp file last written before then, by a writer
# that cannot be checked, is no live write of ours.
_STARTED = time.time()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class PausetuneError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits 1, without a traceback."""


QUOTE_LIMIT = 200  # characters of a value an error line shows


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """At most `limit` characters of a text an error line quotes, its full size said: a 2000-word needle or a huge
    mapping must not bury the line."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quote(value: Any) -> str:
    """A value as an error line shows it: JSON, cut()."""
    return cut(json.dumps(value, ensure_ascii=False, default=str))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Errors of writing itself (disk full, quota, read-only, a file where a folder should be): one line naming the
# path. Inside a `with atomic_*` block only the disk-full kind is taken for one (the block may read inputs too).
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_WRITE_ERRNOS = _FULL | {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


def write_error(path, e: OSError) -> PausetuneError:
    """One line naming the file that could not be written and why (the temp file's name would mean nothing)."""
    path = Path(path)
    why = os.strerror(e.errno) if e.errno else (e.strerror or type(e).__name__)  # pyarrow wraps it in prose
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None and blocker != path:
            why = f"{blocker} is a file, not a folder"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and e.filename and str(e.filename) != str(path) \
            and not Path(e.filename).name.startswith(f".{path.name}."):  # a folder above it, not our temp file
        why = f"{why}: {e.filename}"
    return PausetuneError(f"{path}: could not write ({why})")


@contextlib.contextmanager
def _writing(path, errnos=_WRITE_ERRNOS) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno not in errnos:
            raise
        raise write_error(path, e) from None


def _temp_beside(path: Path, folder: bool, suffix: str = ".tmp") -> Path:
    """A new temp file (or folder) beside `path`, named for its writer (_writer_tag), once what killed writers left
    in that folder is removed (_remove_dead_writers)."""
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_writers(path)
        prefix = f".{path.name}.{_writer_tag()}."
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    try:
        with _writing(path):  # mkstemp's 0600 (mkdtemp's 0700) would make outputs private on a shared cluster
            os.chmod(tmp, (0o777 if folder else 0o666) & ~_umask())
    except BaseException:
        _remove(tmp)
        raise
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block finishes."""
    path = Path(path)
    tmp = _temp_beside(path, folder=False, suffix=suffix or ".tmp")
    try:
        with _writing(path, _FULL):
            yield tmp
        with _writing(path):
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def scratch_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path` for work towards it (an unzipped archive, a download), removed when the
    block ends; one a killed job left is removed by the next writer of `path`, like atomic_path's."""
    path = Path(path)
    tmp = _temp_beside(path, folder=True)
    try:
        with _writing(path, _FULL):
            yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# A folder output's mark of origin, written into every folder atomic_dir (and publish) makes: a rerun replaces a
# folder whole, so it replaces only one that carries it.
OUTPUT_MARKER = ".pausetune-output"
MARKER_TEXT = "written by pausetune: a rerun of its stage replaces this folder whole\n"


def ours(folder: str | os.PathLike) -> bool:
    """May the pipeline replace (delete) `folder`? Yes when it is missing, empty (but for atomic_path's and
    atomic_dir's temp files and Snakemake's timestamp) or carries OUTPUT_MARKER."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return not (folder.exists() or folder.is_symlink())
    names = [p.name for p in folder.iterdir() if not (_TAGGED.match(p.name) or p.name == ".snakemake_timestamp")]
    return not names or OUTPUT_MARKER in names


def check_ours(folder: str | os.PathLike, what: str = "output folder") -> None:
    """One line, before anything is created or removed, where replacing `folder` would delete what the pipeline
    did not write (a user's folder named by --output, or by a config value)."""
    if not ours(folder):
        raise PausetuneError(f"{folder}: exists and was not written by pausetune (no {OUTPUT_MARKER} in it); "
                             f"refusing to replace it as the {what}: move it away or choose another path")


def mark(folder: str | os.PathLike) -> None:
    write_text(Path(folder) / OUTPUT_MARKER, MARKER_TEXT)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; swap it into place only if the block finishes. Refuses, before anything,
    a `path` the pipeline did not write (check_ours); marks the folder it writes."""
    path = Path(path)
    check_ours(path)
    tmp = _temp_beside(path, folder=True)
    try:
        with _writing(path, _FULL):
            yield tmp
            mark(tmp)
        with _writing(path):
            if path.exists():
                old = tmp.with_suffix(".old")  # named for this writer too: a killed swap's is removed next time
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# A temp name says who writes it: `.{name}.{pid}-{host}.{mkstemp's 8 characters}{suffix}`, host a hash of the host
# name and pid namespace (where that pid means something), so a later job can tell a killed writer's leftovers from a
# live concurrent job's (eval blocks run in parallel into the same folders, on a cluster on other machines too).
def _pid_space() -> str:
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}:{ns}"


_HOST = hashlib.sha256(_pid_space().encode()).hexdigest()[:8]
_TAG = r"(\d+)-([0-9a-f]{8})\.[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)?"  # what follows `.{name}.`
_TAGGED = re.compile(rf"^\..+\.{_TAG}$")
# Another machine's writer cannot be asked whether it lives: its temp file must be this much older than this process
# (a live write touches its file far more often; clocks of cluster nodes differ by seconds).
FOREIGN_TMP_AGE_S = 3600.0


def _writer_tag() -> str:
    return f"{os.getpid()}-{_HOST}"


def _remove(p: Path) -> None:
    """Best effort: a read-only folder keeps its leftovers (the job's own write then says why)."""
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def _process_start(pid: int) -> float | None:
    """When a live process started (Linux /proc; None where unknown); a zombie's is +inf: it writes nothing more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return float("inf")
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _writer_gone(tag: re.Match, mtime: float) -> bool:
    """Is the writer of a temp file gone: a dead (or zombie) process of this machine, or, for another machine's,
    a file last written more than FOREIGN_TMP_AGE_S before this process started? A live writer's never is."""
    if tag.group(2) != _HOST:
        return mtime < _STARTED - FOREIGN_TMP_AGE_S
    pid = int(tag.group(1))
    if pid == os.getpid():
        return mtime < _STARTED - 2  # an earlier process with our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    started = _process_start(pid)  # alive: a zombie, or the pid reused by a process younger than the file?
    return started is not None and mtime < started - 2  # (btime has whole seconds)


def _sweep(folder: Path) -> None:
    """Remove from `folder` the temp files and folders (atomic_path's, atomic_dir's, scratch_dir's) whose writer is
    gone (_writer_gone). A live concurrent writer's (an eval block beside ours, another node's job) is never
    touched."""
    try:
        with os.scandir(folder) as it:
            entries = [(e, tag) for e in it if (tag := _TAGGED.match(e.name))]
    except OSError:
        return  # missing or unreadable: nothing of ours there (a write will say why)
    for e, tag in entries:
        try:
            if _writer_gone(tag, e.stat(follow_symlinks=False).st_mtime):
                _remove(Path(e.path))
        except OSError:
            continue  # removed by another writer meanwhile


_SWEPT: set[str] = set()  # folders this process has swept


def _remove_dead_writers(path: Path) -> None:
    """What atomic_path, atomic_dir and scratch_dir do before they make their temp: the first one a process makes in
    a folder sweeps it, so a killed job's leftovers go with the next job that writes there, and no stage has to
    remember to clean up. Once per folder and process: a scan of the 10,000 entries of a cell cache costs ~40 ms,
    too much for each of its writes."""
    folder = os.path.abspath(path.parent)
    if folder not in _SWEPT:
        _sweep(Path(folder))
        _SWEPT.add(folder)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def dumps_json(obj: Any) -> str:
    """Stable JSON: sorted keys, fixed indent, trailing newline, so equal content gives equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PausetuneError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise PausetuneError(f"{path}: not valid JSON ({e.msg}: line {e.lineno} column {e.colno})") from None


def write_parquet(path: str | os.PathLike, df) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    import pandas as pd

    if not Path(path).exists():
        raise PausetuneError(f"{path}: file not found")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types for a corrupt file
        raise PausetuneError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    missing = [c for c in columns or [] if c not in df.columns]
    if missing:
        raise PausetuneError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    return df


def hub_unreachable(e: BaseException) -> bool:
    """True when a Hugging Face hub client error means the hub could not be reached (offline, HF_HUB_OFFLINE,
    DNS, timeout): the user needs to hear that, not the client's class name (LocalEntryNotFoundError)."""
    names = {c.__name__ for c in type(e).__mro__}
    text = str(e)
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout",
                         "ReadTimeout", "Timeout", "TimeoutError", "NameResolutionError", "MaxRetryError"}) \
        or "Couldn't reach" in text or "offline mode" in text.lower() or "LocalEntryNotFoundError" in text


def cache_dir(config: dict | None = None) -> Path:
    """Downloads and conversions shared by every project on the machine: config cache_dir, $PAUSETUNE_CACHE,
    else ~/.cache/pausetune."""
    configured = (config or {}).get("cache_dir")
    return Path(configured or os.environ.get("PAUSETUNE_CACHE") or Path.home() / ".cache" / "pausetune")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), for the cache shared by every project on the machine:
    while held, temp folders there belong to no live writer and can be cleaned."""
    import fcntl

    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
