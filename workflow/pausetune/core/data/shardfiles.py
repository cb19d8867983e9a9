"""Reading training shards (the format the `shards` stage writes), for training and tests."""
from __future__ import annotations

from pathlib import Path

def load_shards(shard_dir: str):
    import datasets

    from ..io import read_json

    return datasets.load_from_disk(str(Path(shard_dir) / "dataset")), read_json(Path(shard_dir) / "manifest.json")
