"""Which essays feed training, validation and the eval haystack: a hash of (seed, id), stable when essays are added."""
from __future__ import annotations

import hashlib

from .io import PausetuneError

def _rank(seed: int, salt: str, essay_id: str) -> float:
    h = hashlib.sha256(f"{seed}:{salt}:{essay_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def essay_split(ids: list[str], shards_cfg: dict, seed: int) -> dict[str, list[str]]:
    """Which essays feed training, validation and the eval haystack (sorted lists of ids)."""
    ids = sorted(ids)
    haystack = [i for i in ids if _rank(seed, "haystack", i) < shards_cfg.get("haystack_fraction", 0.5)] \
        if shards_cfg.get("holdout_haystack", True) else list(ids)
    held = set(haystack) if shards_cfg.get("holdout_haystack", True) else set()
    rest = [i for i in ids if i not in held]
    val = [i for i in rest if _rank(seed, "validation", i) < shards_cfg.get("validation_fraction", 0.1)]
    train = [i for i in rest if i not in set(val)]
    if not train:
        raise PausetuneError("config key 'shards': no essays left for training after the haystack/validation split")
    return {"train": train, "validation": val, "haystack": haystack}
