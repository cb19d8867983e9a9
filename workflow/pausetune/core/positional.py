"""Ms-PoE, a training-free positional reference arm (Zhang et al. 2024, "Found in the Middle: How Language Models
Use Long Contexts Better via Plug-and-Play Positional Encoding", arXiv 2403.04797; their code: VITA-Group/Ms-PoE).

Each attention head sees RoPE positions divided by its own ratio r (position interpolation per head: a query at m
and a key at n meet at angle (m - n) / r), with ratios spread over [ratio_min, ratio_max] and the first layers left
as they are. Keys are rotated once, with their scaled positions, and cached that way (as Ms-PoE does), so the
engine's prefix reuse and batched decode need nothing new.

Where this departs from their code (config eval.ms_poe; the cells record it):
- one ratio per key-value group, shared by its query heads: their code gives a query head and the key head it
  reads different ratios under grouped-query attention, so the score depends on m / r_q - n / r_k, not on the
  distance; SmolLM2 has 3 key-value heads for 9 query heads;
- a fixed order (group g of G gets ratio_min + (ratio_max - ratio_min) * g / max(G - 1, 1)) instead of ordering
  heads by an attention-outlier score measured on each prompt's prefill: a data-dependent order would make a cell's
  positions depend on its own prompt in a way the prefix cache cannot share;
- Llama-family models only (RoPE applied straight to the q / k projections); Gemma 3 normalises q and k first.

With every ratio 1 the model is the plain model bit for bit (tests/test_positional.py): the rotation is the same
elementwise arithmetic on the same cos / sin, and the model's own rotation then multiplies by 1 and adds 0.
"""
from __future__ import annotations

from .io import PausetuneError

SUPPORTED = ("llama",)  # model types whose attention rotates the raw q / k projections


def check_model(model: str, model_type: str, layers: int, settings: dict) -> None:
    """Ms-PoE's settings against a model's config, one line naming the key: while the DAG is built (from the prepared
    model's config.json) and again when the eval job hooks it in."""
    if model_type not in SUPPORTED:
        raise PausetuneError(f"eval variant ms-poe: model '{model}' is of type '{model_type}', not supported (Llama-"
                             f"family models only: {', '.join(SUPPORTED)}); drop ms-poe from eval.variants or the "
                             f"model from eval.models")
    if int(settings["from_layer"]) >= layers:
        raise PausetuneError(f"config key 'eval.ms_poe.from_layer': {settings['from_layer']}, model '{model}' has "
                             f"{layers} layers (none would change); expected 0 to {layers - 1}")


def group_ratios(groups: int, ratio_min: float, ratio_max: float) -> list[float]:
    """The ratio of each key-value group, evenly spaced from ratio_min to ratio_max."""
    if groups == 1:
        return [float(ratio_min)]
    return [ratio_min + (ratio_max - ratio_min) * g / (groups - 1) for g in range(groups)]


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_ms_poe(model, settings: dict) -> list:
    """Install Ms-PoE on a loaded model (settings: eval.ms_poe {ratio_min, ratio_max, from_layer}); returns the
    hook handles (remove them to restore the model)."""
    import torch

    cfg = model.config
    check_model(getattr(cfg, "name_or_path", "") or "?", cfg.model_type, len(model.model.layers), settings)
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    ratios = group_ratios(kv, float(settings["ratio_min"]), float(settings["ratio_max"]))
    rotary = model.model.rotary_emb
    layers = model.model.layers[int(settings["from_layer"]):]
    handles = []

    def tables(hidden, position_ids):
        """cos / sin of each group's scaled positions, [batch, T, groups, head_dim], as the model computes its own."""
        cos, sin = zip(*(rotary(hidden, position_ids.float() / r) for r in ratios))
        return torch.stack(cos, dim=2), torch.stack(sin, dim=2)

    def pre_attention(module, args, kwargs):
        pos = kwargs.get("position_ids")
        if pos is None:
            raise PausetuneError("eval variant ms-poe: the attention got no position_ids")
        cos, sin = kwargs["position_embeddings"]
        module._ms_poe = tables(kwargs.get("hidden_states", args[0] if args else None), pos)
        # the model's own rotation becomes x * 1 + rotate_half(x) * 0 = x: the projections are rotated already
        kwargs["position_embeddings"] = (torch.ones_like(cos), torch.zeros_like(sin))
        return args, kwargs

    def rotate(module, n_heads):
        def hook(_, __, out):
            cos, sin = module._ms_poe  # [b, T, G, d]
            b, t, _ = out.shape
            x = out.view(b, t, kv, n_heads // kv, head_dim)
            c, s = cos.unsqueeze(3), sin.unsqueeze(3)
            return ((x * c) + (_rotate_half(x) * s)).view(b, t, -1)
        return hook

    for layer in layers:
        attn = layer.self_attn
        handles.append(attn.register_forward_pre_hook(pre_attention, with_kwargs=True))
        handles.append(attn.q_proj.register_forward_hook(rotate(attn, heads)))
        handles.append(attn.k_proj.register_forward_hook(rotate(attn, kv)))
    return handles
