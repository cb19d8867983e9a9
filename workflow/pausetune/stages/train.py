"""Stage `train`: LoRA / QLoRA pause-tuning of one (model, variant) checkpoint.

results/checkpoints/{model}/{variant}/ holds
- `adapter/`: the peft LoRA adapter (safetensors; in the `pause` variant with the trained pause-token row),
- `tokenizer/`: the tokenizer the shards were made with (pause token included): eval loads exactly it,
- `train_log.jsonl`: one line per optimizer step (loss, lr, grad norm, tokens/s, peak memory) and one per
  validation pass (`val_loss`),
- `manifest.json`: resolved train config, shard hashes, seed, package versions, wall time, final losses, counts.
The folder is written with `atomic_dir`: it appears complete or not at all.

The recipe (every value from config `train`): peft LoRA on the configured projections of a frozen base,
AdamW (torch) with decoupled weight decay on the LoRA weights, clipped gradients, a linear (or cosine /
constant) schedule with warmup, `grad_accum` micro-batches of `batch_size` packed rows per optimizer step. The
data order is stateless: global row g is row `perm(epoch)[g % N]` with `perm(epoch)` a permutation seeded by
(seed, epoch), so epochs are reshuffled and a resumed run reads exactly the rows an uninterrupted run would.

Objective (config `train.objective`): `lm` (default) is the causal-LM loss over packed essay rows of `--shards`;
`retrieval` (issue 17, the paper's) trains on `--examples` (stage `examples`: an essay context with a hidden
needle, the question, the answer), right-padded micro-batches, loss on the answer span only (`train.loss_on:
answer`, labels -100 elsewhere) or on every token (`all`). The step loss is the exact mean over the step's loss
tokens, and the LM head runs only on the hidden states that carry a label (`masked_loss`): with answer-only loss
that is a few dozen positions of a 2K-token example, not a [T, vocabulary] logit tensor.

Pause token: in `special` (and `reserved`) mode with a single pause id, the embedding row of the pause token
is trained through peft's `trainable_token_indices` (one row, no full-embedding copy, base weights frozen).
On models with tied input/output embeddings peft wraps the head with the same trainable row, so the output row
follows (tests/test_train.py shows it); on untied models the head's pause row is trained as well, since the
loss predicts the pause token after every paragraph. The row is kept out of weight decay (an embedding).

QLoRA (`quantization: nf4`): the base loads in 4-bit NF4 with double quantization and bf16 compute. We do NOT
call peft's `prepare_model_for_kbit_training`: it upcasts every non-quantized weight (norms, embeddings, head)
to fp32, which turns the residual stream fp32 and keeps SDPA off its flash kernel (ENVIRONMENT.md: 1.6x the
memory of bf16 LoRA, OOM at 2x8192). Here the base is frozen, stays bf16, the LoRA weights are fp32 (peft's
adapter autocast) and their output is cast back to bf16, gradient checkpointing is non-reentrant.

Resumable: every `save_every` steps the training state (trainable weights, optimizer, scheduler, RNG, step)
goes atomically into `{output}.state/` (beside the output, so Snakemake does not delete it on failure). A job
killed at any point and started again continues from the last saved step and reaches bitwise the same adapter
on the CPU (same seed, fp32, same thread count). A state from a different run (config or inputs changed) is
discarded. After a successful finish the state folder is removed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path

from ..core.checkpoints import dir_hashes
from ..core.design import TRAIN_VARIANTS
from ..core.fingerprint import code_record, fingerprint
from ..core.io import PausetuneError, atomic_dir, read_json, sha256_file, write_json, write_text

STATE_VERSION = 1
# config keys of `train` that do not change the trained adapter (the run key ignores them)
_NON_RECIPE_KEYS = ("models", "threads", "resources", "save_every")


# ----------------------------------------------------------------------------------------------- inputs
def _load_shard_tokenizer(shard_dir: Path):
    from transformers import AutoTokenizer

    tok_dir = shard_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise PausetuneError(f"{tok_dir}: missing (expected the tokenizer the shards were made with)")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def check_inputs(model_name: str, variant: str, model_dir: str | Path, shard_dir: str | Path, config: dict) -> dict:
    """Every check that can fail before a model is loaded; one-line PausetuneError naming the file or key.

    Returns {"entry", "shard_manifest", "tokenizer" (the shards' own), "pause_ids", "max_context"}.
    """
    from ..core.models import load_tokenizer, max_context, model_entry
    from ..core.tokens import setup_pause, tokenizer_fingerprint

    if variant not in TRAIN_VARIANTS:
        raise PausetuneError(f"train variant '{variant}': expected one of {TRAIN_VARIANTS}")
    entry = model_entry(config, model_name)
    model_dir, shard_dir = Path(model_dir), Path(shard_dir)
    if not (model_dir / "prepared.json").exists():
        raise PausetuneError(f"{model_dir}/prepared.json: missing (run `pausetune prepare-model --model {model_name}`)")
    mpath = shard_dir / "manifest.json"
    objective = config.get("train", {}).get("objective", "lm")
    if not mpath.exists():
        made_by = "an examples folder made by `pausetune examples`" if objective == "retrieval" \
            else "a shard folder made by `pausetune shards`"
        raise PausetuneError(f"{mpath}: missing (expected {made_by})")
    manifest = read_json(mpath)
    if manifest.get("objective", "lm") != objective:
        raise PausetuneError(f"{mpath}: made for objective '{manifest.get('objective', 'lm')}', config key "
                             f"'train.objective' is '{objective}' (retrieval trains on --examples, lm on --shards)")
    if objective == "retrieval":
        from ..core.banks import bank, bank_hash

        for which in ("train", "eval"):
            if manifest.get("banks", {}).get(which, {}).get("sha256") != bank_hash(bank(config, which)):
                raise PausetuneError(f"{mpath}: made from another {which} needle bank than config 'banks' says; "
                                     f"rebuild the examples")
    made_as = manifest.get("variant")
    if made_as != variant:
        extra = " and have no pause token" if variant == "pause" else ""
        raise PausetuneError(f"{mpath}: shards were made for variant '{made_as}'{extra}; "
                             f"train --variant {variant} needs shards of variant '{variant}'")
    tok = _load_shard_tokenizer(shard_dir)
    fp = manifest.get("tokenizer_fingerprint")
    pause_ids = [int(i) for i in manifest.get("pause_ids") or []]
    if variant == "pause":
        spause = manifest.get("pause") or {}
        if not pause_ids:
            raise PausetuneError(f"{mpath}: variant 'pause' but 'pause_ids' is empty (no pause token in these shards)")
        if spause.get("mode") in ("special", "reserved"):
            token = spause.get("token") if spause.get("mode") == "special" else spause.get("reserved_token")
            if token not in tok.get_vocab() or tok.convert_tokens_to_ids(token) != pause_ids[0]:
                raise PausetuneError(f"{shard_dir}/tokenizer: pause token '{token}' missing or not id {pause_ids[0]} "
                                     f"(manifest pause_ids); rebuild the shards")
        cpause = config.get("pause", {})
        for key in ("mode", "token"):
            if key in cpause and key in spause and cpause[key] != spause[key]:
                raise PausetuneError(f"{mpath}: shards were made with pause.{key}={spause[key]!r}, "
                                     f"config says pause.{key}={cpause[key]!r}; rebuild the shards")
    if tokenizer_fingerprint(tok) != fp:
        raise PausetuneError(f"{shard_dir}/tokenizer: fingerprint {tokenizer_fingerprint(tok)} does not match "
                             f"the shard manifest's {fp} (a damaged shard folder); rebuild the shards")
    base_tok = load_tokenizer(model_dir)
    if variant == "pause":
        setup_pause(base_tok, manifest.get("pause") or config.get("pause", {}))
    if tokenizer_fingerprint(base_tok) != fp:
        raise PausetuneError(
            f"{mpath}: shards were made with another tokenizer (fingerprint {fp}) than model '{model_name}' "
            f"in {model_dir} ({tokenizer_fingerprint(base_tok)} with the shards' pause token added); "
            f"rebuild the shards for this model")
    window = max_context(model_dir, entry)
    if objective == "retrieval" and int(manifest["lengths"]["max"]) > window:
        raise PausetuneError(f"{mpath}: example lengths up to {manifest['lengths']['max']} exceed the maximum context "
                             f"{window} of model '{model_name}' (config key 'examples.lengths.max')")
    if int(manifest["seq_len"]) > window:
        raise PausetuneError(f"{mpath}: seq_len {manifest['seq_len']} exceeds the maximum context {window} of "
                             f"model '{model_name}' (config key 'shards.seq_len' or 'models.{model_name}.max_context')")
    if not manifest.get("splits", {}).get("train", {}).get("rows"):
        raise PausetuneError(f"{mpath}: no training rows")
    check_target_modules(meta_model(model_dir), config.get("train", {}).get("lora", {}).get("target_modules") or [])
    return {"entry": entry, "shard_manifest": manifest, "tokenizer": tok, "pause_ids": pause_ids,
            "max_context": window}


# ------------------------------------------------------------------------------------------------ model
def linear_module_names(model) -> list[str]:
    """Leaf names of the model's linear layers (nn.Linear, bnb Linear4bit/8bit, GPT-2's Conv1D)."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    names = set()
    for name, mod in model.named_modules():
        if name and isinstance(mod, (nn.Linear, Conv1D)):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def meta_model(model_dir):
    """The model's module structure without weights (meta device): for checks before the real load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..core.models import resolve_path

    path, info = resolve_path(model_dir)
    remote = info.get("trust_remote_code", False)
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=remote)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg, trust_remote_code=remote)


def check_target_modules(model, targets: list[str]) -> list[str]:
    """One-line error when a configured LoRA target is not a linear module of `model`; returns the names."""
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise PausetuneError(
            f"config key 'train.lora.target_modules': {missing} not in this model "
            f"({type(model).__name__}); its linear modules are: {', '.join(available)}")
    return available


def _leaf_name(model, module) -> str | None:
    if module is None:
        return None
    for name, mod in model.named_modules():
        if mod is module:
            return name.rsplit(".", 1)[-1]
    return None


def _ties_embeddings(model) -> bool:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    out = model.get_output_embeddings()
    return bool(getattr(cfg, "tie_word_embeddings", False)) or (
        out is not None and out.weight is model.get_input_embeddings().weight)


def prepare_peft(model, train_cfg: dict, pause_ids: list[int] | None = None, pause_mode: str | None = None):
    """Freeze `model`, wrap it with LoRA (and the trainable pause row); return (peft_model, info dict)."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    lcfg = train_cfg.get("lora", {})
    targets = list(lcfg.get("target_modules") or [])
    available = check_target_modules(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    if getattr(model.config, "use_cache", None) is not None:
        model.config.use_cache = False
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    for mod in model.modules():
        # bitsandbytes on an AVX512-BF16 CPU repacks 4-bit weights for an inference kernel on the first no-grad
        # eval forward (our validation pass); that kernel has no autograd, so the next training backward through
        # the frozen base would be wrong (torch warns "autograd kernel was not registered"). Training keeps the
        # standard layout.
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
    if train_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    conv1d = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in targets for n, m in model.named_modules())
    kwargs = dict(r=int(lcfg.get("r", 16)), lora_alpha=float(lcfg.get("alpha", 16)),
                  lora_dropout=float(lcfg.get("dropout", 0.0)), target_modules=targets, bias="none",
                  task_type="CAUSAL_LM", fan_in_fan_out=conv1d)
    tied = _ties_embeddings(model)
    train_row = bool(pause_ids) and len(pause_ids) == 1 and pause_mode in ("special", "reserved") \
        and train_cfg.get("train_pause_embedding", True)
    token_layers: dict[str, list[int]] = {}
    if train_row:
        if "trainable_token_indices" not in LoraConfig.__dataclass_fields__:
            import peft

            raise PausetuneError(f"peft {peft.__version__} has no LoraConfig(trainable_token_indices=...) "
                                 f"(needs peft >= 0.15; pyproject pins 0.21); or set train.train_pause_embedding: false")
        emb_name = _leaf_name(model, model.get_input_embeddings())
        token_layers[emb_name] = list(pause_ids)
        out_name = _leaf_name(model, model.get_output_embeddings())
        if not tied and out_name and out_name not in targets:
            token_layers[out_name] = list(pause_ids)
        kwargs["trainable_token_indices"] = token_layers
    peft_model = get_peft_model(model, LoraConfig(**kwargs))
    base = peft_model.get_base_model()
    out_follows = bool(train_row) and type(base.get_output_embeddings()).__name__ == "TrainableTokensWrapper"
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in peft_model.parameters())
    info = {
        "trainable_params": int(n_train),
        "total_params": int(n_total),
        "quantized": quantized,
        "kbit_preparation": "bf16 base, fp32 LoRA weights, no fp32 upcast of norms/embeddings" if quantized else None,
        "tied_embeddings": tied,
        "pause_row": {"trained": bool(train_row), "ids": list(pause_ids or []),
                      "layers": sorted(token_layers), "output_row_trained": out_follows,
                      "method": "peft trainable_token_indices" if train_row else None},
        "target_modules": targets,
        "linear_modules": available,
        "gradient_checkpointing": bool(train_cfg.get("gradient_checkpointing")),
        "dtype": str(next(p for p in base.parameters() if p.is_floating_point()).dtype).replace("torch.", ""),
    }
    return peft_model, info


def build_model(model_dir, tokenizer, train_cfg: dict, pause_ids=None, pause_mode=None, device: str | None = None):
    """Load the base from a prepared model dir, fit its embeddings to `tokenizer`, wrap with LoRA."""
    from ..core.models import default_device, load_model
    from ..core.tokens import fit_embeddings

    device = device or default_device()
    quant = train_cfg.get("quantization", "none")
    if quant == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise PausetuneError("config key 'train.quantization': nf4 needs the bitsandbytes package") from None
    base = load_model(model_dir, train_cfg.get("dtype", "auto"), device, quant)
    if tokenizer is not None:
        fit_embeddings(base, tokenizer)
    return prepare_peft(base, train_cfg, pause_ids, pause_mode)


def make_optimizer(model, train_cfg: dict):
    """AdamW (torch): weight decay on LoRA weights, none on the trained token rows; scheduler with warmup."""
    import torch
    from transformers import get_scheduler

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "trainable_tokens" in name or p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(train_cfg.get("weight_decay", 0.01))}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=float(train_cfg.get("lr", 2e-4)), betas=(0.9, 0.999), eps=1e-8)
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[train_cfg.get("scheduler", "linear")]
    sched = get_scheduler(name, opt, num_warmup_steps=int(train_cfg.get("warmup_steps", 0)),
                          num_training_steps=int(train_cfg.get("max_steps", 1)))
    return opt, sched


def autocast_dtype(setting: str, weights_dtype: str, device: str) -> str | None:
    """The autocast dtype of a training run, or None. `auto`: bfloat16 when the weights are fp32 and the device
    multiplies bf16 natively (a GPU, or a CPU with AVX512_BF16 / AMX: measured there ~1.5x fp32 per step for
    SmolLM2 LoRA, where plain bf16 weights lose to the casts between bf16 weights and fp32 adapters)."""
    from ..core.models import cpu_native_bf16

    if setting == "none" or weights_dtype != "float32":
        return None
    if setting == "bfloat16":
        return "bfloat16"
    native = device.startswith("cuda") or (device.startswith("cpu") and cpu_native_bf16())
    return "bfloat16" if native else None


def train_step(model, micro_batches, optimizer, scheduler, max_grad_norm: float | None):
    """One optimizer step over `micro_batches` (LongTensors [B, T] of packed rows, all of the same shape).

    The loss of each micro-batch is the mean over its B*(T-1) predicted tokens; since every row has the same
    length, the average of the micro-batch losses is the exact mean over the whole step. Returns
    (loss, grad_norm, lr) where lr is the rate this step used.
    """
    import torch

    model.train()
    total = None
    n = len(micro_batches)
    for ids in micro_batches:
        out = model(input_ids=ids, labels=ids, use_cache=False)
        (out.loss / n).backward()
        total = out.loss.detach() if total is None else total + out.loss.detach()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total) / n, float(norm), float(lr)


def validation_loss(model, rows, batch_size: int, device) -> float | None:
    """Mean token loss over `rows` (a LongTensor [N, T]); None when there are none."""
    import torch

    if rows is None or len(rows) == 0:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids = rows[i:i + batch_size].to(device)
            out = model(input_ids=ids, labels=ids, use_cache=False)
            total += float(out.loss) * len(ids)
            count += len(ids)
    model.train(was_training)
    return total / count


def collate(rows: list[dict], pad_id: int, loss_on: str = "answer"):
    """Right-padded (input_ids, attention_mask, labels) of retrieval examples; labels -100 outside the loss span
    (the answer span, or every real token with loss_on 'all') and on padding."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
        a, b = (int(r["answer_start"]), int(r["answer_end"])) if loss_on == "answer" else (1, n)
        labels[i, a:b] = ids[i, a:b]
    return ids, mask, labels


def masked_loss(model, ids, mask, labels):
    """(sum of token losses, number of loss tokens), the LM head applied only where there is loss.

    The transformer body runs on every position; the head (vocabulary-sized, the largest activation of a long
    example) only on the hidden states whose next token carries a label. Equal to the causal-LM loss of
    `model(labels=...)` (tests/test_examples.py checks it); models whose head does more than a linear map (logit
    soft-capping, logit scaling) are not supported by this path."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.base_model(input_ids=ids, attention_mask=mask, use_cache=False)[0]
    target = labels[:, 1:]
    keep = target != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), target[keep], reduction="sum"), int(keep.sum())


def retrieval_step(model, micro_batches, optimizer, scheduler, max_grad_norm: float | None):
    """One optimizer step over micro-batches of (ids, mask, labels): the exact mean over the step's loss tokens."""
    import torch

    model.train()
    n_tokens = sum(int((lab[:, 1:] != -100).sum()) for _, _, lab in micro_batches)
    total = 0.0
    for ids, mask, labels in micro_batches:
        loss, _ = masked_loss(model, ids, mask, labels)
        (loss / max(n_tokens, 1)).backward()
        total += float(loss.detach())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / max(n_tokens, 1), float(norm), float(lr)


def retrieval_validation_loss(model, rows: list[dict], batch_size: int, pad_id: int, loss_on: str, device):
    """Mean loss per loss token over validation examples; None when there are none."""
    import torch

    if not rows:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            ids, mask, labels = (t.to(device) for t in collate(rows[i:i + batch_size], pad_id, loss_on))
            loss, n = masked_loss(model, ids, mask, labels)
            total += float(loss)
            count += n
    model.train(was_training)
    return total / max(count, 1)


class DataOrder:
    """Global row g -> training row perm(epoch)[g % n], perm(epoch) seeded by (seed, epoch): stateless, resumable."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, []

    def perm(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            order = list(range(self.n))
            random.Random(f"{self.seed}:train-order:{epoch}").shuffle(order)
            self._epoch, self._perm = epoch, order
        return self._perm

    def rows(self, start: int, count: int) -> list[int]:
        return [self.perm(g // self.n)[g % self.n] for g in range(start, start + count)]


# ------------------------------------------------------------------------------------------------ state
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


def _clean_stale_tmp(path: Path) -> None:
    """Temp folders atomic_dir left behind when a job was SIGKILLed (`.{name}.*.tmp`)."""
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------- helpers
def package_versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("pausetune", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets",
                "safetensors", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def peak_memory_mb(device: str) -> tuple[float, str]:
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def _recipe(train_cfg: dict) -> dict:
    return {k: v for k, v in train_cfg.items() if k not in _NON_RECIPE_KEYS}






# ------------------------------------------------------------------------------------------------- train
def train(model_name: str, variant: str, model_dir: str | Path, shard_dir: str | Path, output: str | Path,
          config: dict, device: str | None = None, threads: int | None = None, progress: bool = True,
          return_model: bool = False):
    """Train one checkpoint into `output` (atomically); return its manifest (and the peft model if asked)."""
    t_start = time.time()
    import torch

    from ..core.models import default_device, resolve_path
    from ..core.shardfiles import load_shards

    train_cfg = dict(config["train"])
    threads = threads or train_cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    seed = int(config.get("seed", 0))
    device = device or default_device()
    output, shard_dir, model_dir = Path(output), Path(shard_dir), Path(model_dir)
    checked = check_inputs(model_name, variant, model_dir, shard_dir, config)
    if train_cfg.get("dtype", "auto") == "auto":  # like eval: the model entry's dtype, then the machine's rule
        train_cfg["dtype"] = checked["entry"].get("dtype", "auto")
    smanifest, tok, pause_ids = checked["shard_manifest"], checked["tokenizer"], checked["pause_ids"]
    pause_mode = (smanifest.get("pause") or {}).get("mode")
    dd, _ = load_shards(str(shard_dir))
    retrieval = train_cfg.get("objective", "lm") == "retrieval"
    loss_on = train_cfg.get("loss_on", "answer")
    train_rows = dd["train"] if retrieval else dd["train"].with_format("torch")
    if variant == "pause" and retrieval:
        if not any(dd["train"]["pause_positions"]):
            raise PausetuneError(f"{shard_dir}: variant 'pause' but no pause marker occurs in the examples")
    elif variant == "pause":
        import numpy as np

        col = dd["train"].with_format("numpy")["input_ids"]
        if not np.isin(np.asarray(col), pause_ids).any():
            raise PausetuneError(f"{shard_dir}: variant 'pause' but no pause id {pause_ids} occurs in the train rows")
    n_val = len(dd["validation"]) if "validation" in dd else 0
    eval_rows = train_cfg.get("eval_rows")
    n_val = min(n_val, eval_rows) if eval_rows else n_val
    if retrieval:
        val_rows = [dd["validation"][i] for i in range(n_val)] if n_val else None
    else:
        val_rows = dd["validation"].with_format("torch")[:n_val]["input_ids"].long() if n_val else None

    def val_loss():
        with amp():
            if retrieval:
                return retrieval_validation_loss(model, val_rows, bs, tok.pad_token_id, loss_on, device)
            return validation_loss(model, val_rows, bs, device)

    _, prepared = resolve_path(model_dir)
    run_key = hashlib.sha256(json.dumps({
        "recipe": _recipe(train_cfg), "seed": seed, "variant": variant, "model": model_name,
        "shards": sha256_file(shard_dir / "manifest.json"), "prepared": sha256_file(model_dir / "prepared.json"),
        "device": str(device).split(":")[0], "code": fingerprint(__name__),  # never resume another code's state
    }, sort_keys=True).encode()).hexdigest()[:16]

    torch.manual_seed(seed)
    random.seed(seed)
    model, info = build_model(model_dir, tok, train_cfg, pause_ids, pause_mode, device)
    amp_dtype = autocast_dtype(train_cfg.get("autocast", "auto"), info["dtype"], str(device))
    info["autocast"] = amp_dtype

    def amp():
        """bf16 matmuls over fp32 weights (AMX / AVX512_BF16 / tensor cores); fp32 master weights and optimizer."""
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, amp_dtype))

    if retrieval:
        mcfg = model.get_base_model().config
        for key in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
            if getattr(mcfg, key, None) not in (None, 1, 1.0):
                raise PausetuneError(f"model '{model_name}': its head applies {key}, which the retrieval loss "
                                     f"(LM head on the loss positions only) does not; use train.objective lm")
    optimizer, scheduler = make_optimizer(model, train_cfg)

    state_dir = state_dir_for(output)
    _clean_stale_tmp(state_dir)
    _clean_stale_tmp(output)
    log: list[dict] = []
    step, resumed_from, prior_train_s = 0, [], 0.0
    meta = load_state(state_dir, run_key)
    if meta is not None:
        try:
            restore_state(state_dir, model, optimizer, scheduler)
        except DamagedState as e:  # the only state kept is unreadable: start over, as a fresh run would
            print(f"train {model_name}/{variant}: {state_dir}: damaged training state ({e}); starting over from "
                  f"step 0", file=sys.stderr)
            shutil.rmtree(state_dir, ignore_errors=True)
            meta = None
            torch.manual_seed(seed)
            random.seed(seed)
            model, info = build_model(model_dir, tok, train_cfg, pause_ids, pause_mode, device)
            optimizer, scheduler = make_optimizer(model, train_cfg)
    if meta is not None:
        step, log = int(meta["step"]), list(meta["log"])
        resumed_from = list(meta.get("resumed_from", [])) + [step]
        prior_train_s = float(meta.get("train_time_s", 0.0))
        print(f"train {model_name}/{variant}: resuming from step {step} ({state_dir})", file=sys.stderr)

    bs, accum = int(train_cfg["batch_size"]), int(train_cfg["grad_accum"])
    max_steps, save_every = int(train_cfg["max_steps"]), int(train_cfg.get("save_every") or 0)
    eval_every = int(train_cfg.get("eval_every") or 0)
    seq_len = int(smanifest["seq_len"])
    order = DataOrder(len(train_rows), seed)
    tokens_per_step = bs * accum * seq_len
    tokens_seen = next((int(r["tokens"]) for r in reversed(log) if "tokens" in r), 0)
    from tqdm.auto import tqdm

    bar = tqdm(total=max_steps, initial=step, desc=f"train {model_name}/{variant}", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    t_loop = time.time()
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    while step < max_steps:
        t0 = time.time()
        first = step * accum * bs
        if retrieval:
            micro = [tuple(t.to(device) for t in collate([train_rows[j] for j in order.rows(first + k * bs, bs)],
                                                         tok.pad_token_id, loss_on)) for k in range(accum)]
            tokens_per_step = sum(int(m.sum()) for _, m, _ in micro)
            with amp():
                loss, gnorm, lr = retrieval_step(model, micro, optimizer, scheduler, train_cfg.get("max_grad_norm"))
        else:
            micro = [train_rows[order.rows(first + k * bs, bs)]["input_ids"].long().to(device) for k in range(accum)]
            with amp():
                loss, gnorm, lr = train_step(model, micro, optimizer, scheduler, train_cfg.get("max_grad_norm"))
        tokens_seen += tokens_per_step
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.time() - t0
        step += 1
        mem, mem_kind = peak_memory_mb(device)
        rec = {"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm, "tokens": tokens_seen,
               "tokens_per_s": tokens_per_step / dt if dt > 0 else None, "step_time_s": dt,
               "peak_mem_mb": round(mem, 1), "mem_kind": mem_kind}
        log.append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        if eval_every and step % eval_every == 0 and step < max_steps and val_rows is not None:
            v = val_loss()
            log.append({"step": step, "val_loss": v, "val_rows": n_val})
            bar.write(f"step {step}: validation loss {v:.4f} ({n_val} rows)", file=sys.stderr)
        if save_every and step % save_every == 0 and step < max_steps:
            save_state(state_dir, model, optimizer, scheduler, step, run_key, log,
                       {"resumed_from": resumed_from, "train_time_s": prior_train_s + time.time() - t_loop})
    bar.close()
    train_s = prior_train_s + time.time() - t_loop
    val = val_loss() if val_rows is not None else None
    if val is not None:
        log.append({"step": step, "val_loss": val, "val_rows": n_val})
    final_train = next((r["loss"] for r in reversed(log) if "loss" in r), None)
    mem, mem_kind = peak_memory_mb(device)

    with atomic_dir(output) as tmp:
        model.save_pretrained(str(tmp / "adapter"), safe_serialization=True, save_embedding_layers=False)
        canonical_adapter_config(tmp / "adapter" / "adapter_config.json")
        tok.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in log))
        manifest = {
            "code": code_record(__name__),
            "model": model_name,
            "variant": variant,
            "seed": seed,
            "train": train_cfg,
            "pause": config.get("pause"),
            "model_entry": checked["entry"],
            "base_model": {k: prepared.get(k) for k in ("name", "kind", "source", "commit", "gguf_sha256")},
            "device": str(device),
            "threads": torch.get_num_threads(),
            "objective": "retrieval" if retrieval else "lm",
            "loss_on": loss_on if retrieval else "all",
            **({"retrieval": {k: smanifest.get(k) for k in ("template", "layout", "answer", "answer_span",
                                                            "lengths", "length_unit", "depths",
                                                            "needles_per_example", "banks")}} if retrieval else {}),
            ("examples" if retrieval else "shards"): {
                "path": str(shard_dir),
                "manifest_sha256": sha256_file(shard_dir / "manifest.json"),
                "dataset_sha256": dir_hashes(shard_dir / "dataset"),
                "tokenizer_fingerprint": smanifest.get("tokenizer_fingerprint"),
                "seq_len": seq_len,
                "train_rows": len(train_rows),
                "validation_rows_used": n_val,
            },
            "pause_ids": pause_ids,
            "steps": step,
            "tokens_seen": tokens_seen,
            "epochs_seen": step * bs * accum / len(train_rows),
            "final_train_loss": final_train,
            "final_val_loss": val,
            "first_train_loss": next((r["loss"] for r in log if "loss" in r), None),
            "peak_mem_mb": round(mem, 1),
            "mem_kind": mem_kind,
            "train_time_s": round(train_s, 3),
            "wall_time_s": round(time.time() - t_start, 3),
            "resumed_from": resumed_from,
            "run_key": run_key,
            "adapter_sha256": sha256_file(tmp / "adapter" / "adapter_model.safetensors"),
            "packages": package_versions(),
            **info,
        }
        manifest["wall_time_s"] = round(time.time() - t_start, 3)
        write_json(tmp / "manifest.json", manifest)
    shutil.rmtree(state_dir, ignore_errors=True)
    return (manifest, model) if return_model else manifest




# --------------------------------------------------------------------------------------------------- CLI
def training_metrics(checkpoint_dir: str | Path) -> tuple[dict, list[dict]]:
    """(flat metrics, loss curve rows) of a finished checkpoint, for `dvc metrics` and `dvc plots`."""
    ck = Path(checkpoint_dir)
    m = read_json(ck / "manifest.json")
    name = f"{m.get('model')}/{m.get('variant')}"
    metrics = {k: (round(m[k], 6) if isinstance(m.get(k), float) else m.get(k))
               for k in ("final_train_loss", "final_val_loss", "first_train_loss", "steps", "tokens_seen",
                         "train_time_s", "trainable_params")}
    curve = []
    for line in (ck / "train_log.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            curve.append({"panel": name, "series": "train", "step": r["step"], "loss": round(r["loss"], 6)})
        elif "val_loss" in r:
            curve.append({"panel": name, "series": "validation", "step": r["step"], "loss": round(r["val_loss"], 6)})
    return metrics, curve


def write_metrics(checkpoint_dir, metrics_path, curve_path) -> None:
    metrics, curve = training_metrics(checkpoint_dir)
    if metrics_path:
        write_json(metrics_path, metrics)
    if curve_path:
        lines = ["panel,series,step,loss"] + [f"{r['panel']},{r['series']},{r['step']},{r['loss']}" for r in curve]
        write_text(curve_path, "\n".join(lines) + "\n")


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="name of an entry of config 'models'")
    p.add_argument("--variant", required=True, choices=TRAIN_VARIANTS)
    p.add_argument("--model-dir", required=True, help="data/models/{model}")
    p.add_argument("--shards", default=None, help="data/shards/{model}/{variant} (train.objective lm)")
    p.add_argument("--examples", default=None, help="data/examples/{model}/{variant} (train.objective retrieval)")
    p.add_argument("--output", required=True, help="results/checkpoints/{model}/{variant}")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (overrides config train.threads)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--metrics", default=None, help="also write the final losses here (flat JSON, for dvc metrics)")
    p.add_argument("--loss-curve", default=None, help="also write the loss per step here (CSV, for dvc plots)")


def main(args, config: dict) -> int:
    objective = config["train"].get("objective", "lm")
    data = args.examples if objective == "retrieval" else args.shards
    if not data:
        want = "--examples data/examples/{model}/{variant}" if objective == "retrieval" \
            else "--shards data/shards/{model}/{variant}"
        raise PausetuneError(f"config key 'train.objective' is '{objective}': pass {want}")
    m = train(args.model, args.variant, args.model_dir, data, args.output, config, device=args.device,
              threads=args.threads, progress=not args.no_progress)
    write_metrics(args.output, args.metrics, args.loss_curve)
    val = f"{m['final_val_loss']:.4f}" if m["final_val_loss"] is not None else "n/a"
    print(f"train {args.model}/{args.variant}: {m['steps']} steps, {m['tokens_seen']} tokens, "
          f"loss {m['first_train_loss']:.4f} -> {m['final_train_loss']:.4f}, validation loss {val}, "
          f"{m['trainable_params']} trainable params, {m['train_time_s']:.0f} s -> {args.output}")
    return 0
