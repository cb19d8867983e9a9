"""Which essays feed training, validation and the eval haystack: a hash of (seed, id), stable when essays are added."""
from __future__ import annotations

import hashlib

from ..config import ShardsConfig
from ..io import PausetuneError

def _rank(seed: int, salt: str, essay_id: str) -> float:
    h = hashlib.sha256(f"{seed}:{salt}:{essay_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def essay_split(ids: list[str], shards_cfg: dict, seed: int) -> dict[str, list[str]]:
    """Which essays feed training, validation and the eval haystack (sorted lists of ids)."""
    cfg = ShardsConfig.from_dict(shards_cfg)
    ids = sorted(ids)
    haystack = [i for i in ids if _rank(seed, "haystack", i) < cfg.haystack_fraction] \
        if cfg.holdout_haystack else list(ids)
    held = set(haystack) if cfg.holdout_haystack else set()
    rest = [i for i in ids if i not in held]
    val = [i for i in rest if _rank(seed, "validation", i) < cfg.validation_fraction]
    train = [i for i in rest if i not in set(val)]
    if not train:
        raise PausetuneError("config key 'shards': no essays left for training after the haystack/validation split")
    return {"train": train, "validation": val, "haystack": haystack}
