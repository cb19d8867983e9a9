"""The resumable training state: trainable weights, optimizer, scheduler, RNG and step, saved atomically beside a
checkpoint (`{output}.state/`, not a Snakemake output, so a failed job keeps it) and restored only into the same
run (its run key: recipe, inputs, code)."""
from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

from ..io import PausetuneError, atomic_dir, write_json

STATE_VERSION = 1


def state_dir_for(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".state")


def _rng_state() -> dict:
    import torch

    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    import torch

    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def canonical_adapter_config(path: Path) -> None:
    """peft writes target_modules from a set, in an order that changes with PYTHONHASHSEED: sort it, so the same
    weights give the same adapter folder byte for byte (peft's own format: indent 2, sorted keys)."""
    cfg = json.loads(path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def save_state(state_dir: Path, model, optimizer, scheduler, step: int, run_key: str, log: list[dict],
               extra: dict) -> None:
    import torch
    from safetensors.torch import save_file

    with atomic_dir(state_dir) as tmp:
        trainable = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state()}, tmp / "optim.pt")
        write_json(tmp / "state.json", {"version": STATE_VERSION, "step": step, "run_key": run_key,
                                        "log": log, **extra})


def load_state(state_dir: Path, run_key: str) -> dict | None:
    """The saved state if it belongs to this run, else None (a state of another run is removed)."""
    meta_path = state_dir / "state.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"train: {state_dir}: damaged training state (state.json: {type(e).__name__}); starting over from "
              f"step 0", file=sys.stderr)
        shutil.rmtree(state_dir, ignore_errors=True)
        return None
    if meta.get("run_key") != run_key or meta.get("version") != STATE_VERSION:
        print(f"train: ignoring {state_dir} (saved by a run with another config or inputs)", file=sys.stderr)
        shutil.rmtree(state_dir, ignore_errors=True)
        return None
    return meta


class DamagedState(Exception):
    """A saved training state that cannot be read back (truncated, corrupt): the caller starts over."""


def restore_state(state_dir: Path, model, optimizer, scheduler) -> None:
    import torch
    from safetensors.torch import load_file

    try:
        saved = load_file(str(state_dir / "trainable.safetensors"))
        blob = torch.load(state_dir / "optim.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # safetensors, pickle and zip raise many types for a damaged file
        raise DamagedState(f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}") from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        raise PausetuneError(f"{state_dir}: saved trainable weights do not match the model; delete the folder")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    _set_rng_state(blob["rng"])
