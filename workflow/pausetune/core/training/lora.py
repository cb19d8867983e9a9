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


def hold_frozen_weights(model, dtype: str) -> int:
    """For autocast training: hold every frozen fp32 linear weight in the autocast dtype once, and let the LoRA
    input go to the adapter as it comes; returns how many weights were converted.

    Autocast caches its casts only for weights that train, so each forward cast every frozen base weight from fp32
    again (~106M values per micro-batch for SmolLM2); and peft cast a bf16 input to the fp32 adapter's dtype only for
    autocast to cast it straight back. Both are the same rounding (or none) either way, so a step is bit for bit the
    autocast step over fp32 weights (tests/test_train.py), with less copying and half the base's memory. LoRA
    weights and the pause row (they train), and embeddings with a head tied to them, stay fp32."""
    import torch
    import torch.nn as nn

    target = getattr(torch, dtype)
    shared = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    n = 0
    for mod in model.modules():
        if hasattr(mod, "cast_input_dtype_enabled") and hasattr(mod, "lora_A"):
            mod.cast_input_dtype_enabled = False
        w = getattr(mod, "weight", None)
        if type(mod) is not nn.Linear or w.requires_grad or w.dtype != torch.float32 or w.data_ptr() in shared:
            continue
        if mod.bias is not None and mod.bias.requires_grad:
            continue
        mod.to(target)
        n += 1
    return n


def _token_layers(model):
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    return [m for m in model.modules() if isinstance(m, TrainableTokensLayer)]


def sparse_token_rows(model) -> int:
    """Train the pause row without copying the embedding: returns how many layers now do so.

    peft's trainable-token layer builds a merged copy of the whole [vocabulary, hidden] matrix at every forward (one
    for the embedding, one for a tied head) and, for the head, the gradient of all of it: a third or more of a
    SmolLM2 step (bench/breakdown.py, docs/benchmarks.md). The same values come from the frozen matrix with the trained rows put in where their ids
    occur (embedding) and the trained rows' logits computed apart (head); the delta's gradient is the same sum in
    another order, the same order every run. Under autocast the tied head uses a bf16 copy of the frozen matrix made once (the same rounding
    autocast made at every forward). The module, its parameters and what it saves are peft's; `peft_forwards`
    gives the forward back."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    n = 0
    for layer in _token_layers(model):
        base = layer.base_layer
        if len(layer.active_adapters) != 1 or not isinstance(base, (nn.Embedding, nn.Linear)):
            continue
        # Scaled embeddings (Gemma's sqrt(hidden) factor) scale after the lookup, as peft does.
        scale = layer._get_embed_scale() if isinstance(base, nn.Embedding) else None
        name = layer.active_adapters[0]
        index = torch.tensor(layer.token_indices[name], device=base.weight.device)
        low: dict = {}

        def forward(x, *args, layer=layer, base=base, name=name, index=index, low=low, scale=scale, **kwargs):
            delta = layer.trainable_tokens_delta[name]
            if isinstance(base, nn.Embedding):
                out = F.embedding(x, base.weight, base.padding_idx, base.max_norm, base.norm_type,
                                  base.scale_grad_by_freq, base.sparse)
                hit = x.unsqueeze(-1) == index  # [..., k]
                # a one-hot product, not delta[argmax]: that gather's backward adds every token's gradient into row
                # 0 with atomic adds across threads (a different sum each run); this one's is a plain reduction, the
                # same bits every run. Elementwise, so autocast leaves the rows in fp32 (a matmul would round them)
                rows = (hit.unsqueeze(-1).to(delta.dtype) * delta).sum(-2).to(out.dtype)
                out = torch.where(hit.any(-1, keepdim=True), rows, out)
                return out if scale is None else out * scale.to(out.dtype)
            w = base.weight
            if torch.is_autocast_enabled(x.device.type) and w.dtype == torch.float32:
                dt = torch.get_autocast_dtype(x.device.type)
                if dt not in low:
                    low.clear()
                    low[dt] = w.detach().to(dt)
                w = low[dt]
            out = F.linear(x, w)
            return out.index_copy(-1, index, F.linear(x, delta.to(w.dtype)).to(out.dtype))

        layer.forward = forward
        n += 1
    return n


def fused_lora(model) -> int:
    """Add each LoRA update into its base output inside one GEMM: returns how many layers now do so.

    peft computes `result + lora_B(lora_A(x)) * scaling`: after the rank-r GEMM, a full pass to scale and another
    to add, each over a [tokens, out_features] activation (and again in the backward), ~15% of a SmolLM2 step.
    `addmm(result, lora_A(x), B^T, alpha=scaling)` does the same sum with one rounding instead of three (so not bit
    for bit peft's, and no less exact). Vanilla LoRA only (no dropout, bias, DoRA or other variant, one adapter);
    where the dtypes differ outside autocast (a 4-bit base's bf16 activations, fp32 adapters) peft's forward runs."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    n = 0
    for mod in model.modules():
        if not (hasattr(mod, "lora_A") and hasattr(mod, "lora_variant") and type(mod.base_layer) is nn.Linear):
            continue
        names = list(mod.active_adapters)
        if len(names) != 1 or names[0] in mod.lora_variant or names[0] not in mod.lora_A:
            continue
        name = names[0]
        if not isinstance(mod.lora_dropout[name], nn.Identity) or mod.lora_B[name].bias is not None:
            continue
        cls_forward = type(mod).forward

        def forward(x, *args, mod=mod, name=name, cls_forward=cls_forward, **kwargs):
            a_w, b_w = mod.lora_A[name].weight, mod.lora_B[name].weight
            amp = torch.is_autocast_enabled(x.device.type)
            if args or kwargs or mod.disable_adapters or mod.merged or (not amp and x.dtype != a_w.dtype):
                return cls_forward(mod, x, *args, **kwargs)
            result = mod.base_layer(x)
            low = F.linear(x, a_w)
            flat = torch.addmm(result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1]), b_w.t(),
                               alpha=mod.scaling[name])
            return flat.view(result.shape).to(result.dtype)

        mod.forward = forward
        n += 1
    return n


def peft_forwards(model) -> None:
    """peft's own forwards again (sparse_token_rows, fused_lora undone): what a reloaded checkpoint runs."""
    for mod in model.modules():
        if "forward" in mod.__dict__ and (hasattr(mod, "lora_A") or hasattr(mod, "trainable_tokens_delta")):
            del mod.__dict__["forward"]


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
