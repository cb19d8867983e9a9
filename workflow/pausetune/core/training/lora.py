"""LoRA / QLoRA wrapping of a frozen base, for training: target projections, the trainable pause-embedding row,
the optimizer (the autocast dtype is core.kernels').

Pause token: in `special` (and `reserved`) mode with a single pause id, the embedding row of the pause token
is trained through peft's `trainable_token_indices` (one row, no full-embedding copy, base weights frozen).
On models with tied input/output embeddings peft wraps the head with the same trainable row, so the output row
follows (tests/test_train.py shows it); on untied models the head's pause row is trained as well, since the
loss predicts the pause token after every paragraph. The row is kept out of weight decay (an embedding).

QLoRA (`quantization: nf4`): the base loads in 4-bit NF4 with double quantization and bf16 compute. We do NOT
call peft's `prepare_model_for_kbit_training`: it upcasts every non-quantized weight (norms, embeddings, head)
to fp32, which turns the residual stream fp32 and keeps SDPA off its flash kernel (1.6x the memory of bf16 LoRA,
OOM at 2x8192 on the GPU). Here the base is frozen, stays bf16, the LoRA weights are fp32 (peft's adapter
autocast) and their output is cast back to bf16, gradient checkpointing is non-reentrant.
"""
from __future__ import annotations

from ..config import TrainConfig
from ..io import PausetuneError


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

    from ..models import resolve_path

    path, info = resolve_path(model_dir)
    remote = info.get("trust_remote_code") is True
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


def _train_config(cfg) -> TrainConfig:
    return cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)


def prepare_peft(model, cfg, pause_ids: list[int] | None = None, pause_mode: str | None = None):
    """Freeze `model`, wrap it with LoRA (and the trainable pause row); return (peft_model, info dict).
    `cfg`: the train section (a TrainConfig, or a dict the schema completes)."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    cfg = _train_config(cfg)
    targets = list(cfg.lora.target_modules)
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
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    conv1d = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in targets for n, m in model.named_modules())
    kwargs = dict(r=int(cfg.lora.r), lora_alpha=float(cfg.lora.alpha), lora_dropout=float(cfg.lora.dropout),
                  target_modules=targets, bias="none",
                  task_type="CAUSAL_LM", fan_in_fan_out=conv1d)
    tied = _ties_embeddings(model)
    train_row = bool(pause_ids) and len(pause_ids) == 1 and pause_mode in ("special", "reserved") \
        and cfg.train_pause_embedding
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
        "gradient_checkpointing": bool(cfg.gradient_checkpointing),
        "dtype": str(next(p for p in base.parameters() if p.is_floating_point()).dtype).replace("torch.", ""),
    }
    return peft_model, info


def build_model(model_dir, tokenizer, cfg, pause_ids=None, pause_mode=None, device: str | None = None):
    """Load the base from a prepared model dir, fit its embeddings to `tokenizer`, wrap with LoRA."""
    from ..kernels import default_device
    from ..models import load_model
    from ..tokens import fit_embeddings

    cfg = _train_config(cfg)
    device = device or default_device()
    quant = cfg.quantization
    if quant == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise PausetuneError("config key 'train.quantization': nf4 needs the bitsandbytes package") from None
    base = load_model(model_dir, cfg.dtype, device, quant)
    if tokenizer is not None:
        fit_embeddings(base, tokenizer)
    return prepare_peft(base, cfg, pause_ids, pause_mode)


def make_optimizer(model, cfg):
    """AdamW (torch): weight decay on LoRA weights, none on the trained token rows; scheduler with warmup."""
    import torch
    from transformers import get_scheduler

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "trainable_tokens" in name or p.ndim < 2 else decay).append(p)
    cfg = _train_config(cfg)
    groups = [{"params": decay, "weight_decay": float(cfg.weight_decay)}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=float(cfg.lr), betas=(0.9, 0.999), eps=1e-8)
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler]
    sched = get_scheduler(name, opt, num_warmup_steps=int(cfg.warmup_steps), num_training_steps=int(cfg.max_steps))
    return opt, sched


def peak_memory_mb(device: str) -> tuple[float, str]:
    """(peak memory in MiB, what was measured): CUDA's max allocated on a GPU, the process's max RSS on the CPU."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"
