"""Stage `train` on the CPU with the tiny model (2-layer random Llama, SmolLM2's real tokenizer, seq_len 128).

What is shown here: the loss falls on a fixed batch (fp32 and NF4/QLoRA), only LoRA + the pause row train,
the pause row moves while a frozen row does not and the tied output row follows, the saved adapter reloads
with the in-memory model's logits, a real `pausetune train` killed with SIGKILL resumes to bitwise the same
adapter, bad inputs give one-line errors before training, GPT-2-style and untied models work.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from conftest import DEFAULT_CONFIG, ROOT, TINY_CONFIG, run_cli

torch = pytest.importorskip("torch")

THREADS = 2
FAST = {"max_steps": 3, "warmup_steps": 0, "batch_size": 2, "grad_accum": 1, "eval_rows": 2, "threads": THREADS}


def load_cfg(train: dict | None = None, **top) -> dict:
    from pausetune.core.config import load_config

    return load_config([str(DEFAULT_CONFIG), str(TINY_CONFIG)], json.dumps({"train": train or {}, **top}))


def shard_tok(shard_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shard_dir / "tokenizer")


def fixed_batch(shard_dir: Path, n: int = 2):
    from pausetune.core.data.shardfiles import load_shards

    dd, manifest = load_shards(str(shard_dir))
    return dd["train"].with_format("torch")[:n]["input_ids"].long(), manifest


def adapter_tensors(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))


# ------------------------------------------------------------------------------------------------ units
def test_data_order_reshuffles_each_epoch_and_is_stateless():
    from pausetune.core.training.objectives import DataOrder

    a, b = DataOrder(10, seed=0), DataOrder(10, seed=0)
    e0, e1 = a.rows(0, 10), a.rows(10, 10)
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    assert b.rows(7, 6) == (e0 + e1)[7:13]  # any position, no history needed: what resume relies on
    assert DataOrder(10, seed=1).rows(0, 10) != e0


def test_loss_falls_on_fixed_batch_and_only_lora_and_pause_row_train(tiny_dir, tiny_shards):
    from pausetune.core.training.lora import build_model, make_optimizer
    from pausetune.core.training.objectives import train_step

    torch.set_num_threads(THREADS)
    tok = shard_tok(tiny_shards["pause"])
    batch, manifest = fixed_batch(tiny_shards["pause"], n=1)
    pid = manifest["pause_ids"]
    cfg = load_cfg({"lr": 1e-2, "warmup_steps": 0, "scheduler": "constant", "max_steps": 5})["train"]
    torch.manual_seed(0)
    model, info = build_model(tiny_dir, tok, cfg, pid, "special", "cpu")
    lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    hidden = model.get_input_embeddings().token_adapter.base_layer.weight.shape[1]
    assert info["trainable_params"] == lora + hidden  # LoRA + exactly one embedding row
    assert all(("lora_" in n or "trainable_tokens_delta" in n) for n, p in model.named_parameters() if p.requires_grad)
    assert info["pause_row"]["trained"] and info["tied_embeddings"]
    from pausetune.core.training.objectives import LM

    with torch.no_grad():  # the LM loss through masked_loss is the model's own causal-LM loss
        assert float(LM.loss(model, batch)) == pytest.approx(float(model(input_ids=batch, labels=batch).loss), rel=1e-6)
    opt, sched = make_optimizer(model, cfg)
    losses = [train_step(model, [batch], opt, sched, cfg["max_grad_norm"])[0] for _ in range(4)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.1, losses

    # gradient checkpointing (non-reentrant) computes the same step
    torch.manual_seed(0)
    m_gc, _ = build_model(tiny_dir, tok, {**cfg, "gradient_checkpointing": True}, pid, "special", "cpu")
    torch.manual_seed(0)
    m_nc, _ = build_model(tiny_dir, tok, cfg, pid, "special", "cpu")
    outs = []
    for m in (m_gc, m_nc):
        o, s = make_optimizer(m, cfg)
        outs.append(train_step(m, [batch], o, s, cfg["max_grad_norm"]))
    assert m_gc.get_base_model().is_gradient_checkpointing
    assert outs[0][0] == pytest.approx(outs[1][0], abs=1e-6) and outs[0][1] == pytest.approx(outs[1][1], rel=1e-4)


def test_frozen_weights_held_in_bf16_give_the_autocast_step_bit_for_bit(tiny_dir, tiny_shards):
    """hold_frozen_weights (issue #25) rounds the frozen base once, as autocast did at every forward: the same bits."""
    from pausetune.core.training.lora import build_model, hold_frozen_weights, make_optimizer
    from pausetune.core.training.objectives import train_step

    torch.set_num_threads(THREADS)
    tok = shard_tok(tiny_shards["pause"])
    batch, manifest = fixed_batch(tiny_shards["pause"], n=2)
    cfg = load_cfg({"lr": 1e-2, "warmup_steps": 0, "scheduler": "constant", "max_steps": 5})["train"]
    runs = []
    for hold in (False, True):
        torch.manual_seed(0)
        model, _ = build_model(tiny_dir, tok, cfg, manifest["pause_ids"], "special", "cpu")
        held = hold_frozen_weights(model, "bfloat16") if hold else 0
        opt, sched = make_optimizer(model, cfg)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            steps = [train_step(model, [batch], opt, sched, cfg["max_grad_norm"]) for _ in range(3)]
        runs.append((held, steps, {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad},
                     model.get_base_model()))
    (_, s0, p0, _), (held, s1, p1, base) = runs
    assert held == 2 * 7  # the seven projections of both layers; not the embedding its tied head shares
    assert s0 == s1 and s0[-1][0] < s0[0][0]
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    proj = base.model.layers[0].mlp.down_proj
    assert proj.base_layer.weight.dtype == torch.bfloat16 and proj.lora_A["default"].weight.dtype == torch.float32
    assert base.get_input_embeddings().weight.dtype == torch.float32


@pytest.fixture(scope="module")
def tiny_gemma_dir(tiny_dir, tmp_path_factory):
    """A tiny random Gemma-3 (sliding and full layers, tied and sqrt(hidden)-scaled embeddings) with the tiny
    model's tokenizer, as a prepared model folder: the shards' pause ids are its ids too."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from pausetune.core.models import load_tokenizer

    tok = load_tokenizer(tiny_dir)
    out = tmp_path_factory.mktemp("tiny_gemma")
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=32,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=4096,
                           query_pre_attn_scalar=16, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    Gemma3ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "prepared.json").write_text('{"name": "tiny_gemma", "kind": "random", "path": "."}')
    return out


@pytest.mark.parametrize("amp", [None, "bfloat16"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sparse_pause_row_and_fused_lora_train_as_peft_does(tiny_dir, tiny_shards, amp, arch, request):
    """sparse_token_rows and fused_lora (issue #25) compute peft's step in fewer passes: the same losses, gradient
    norms and weights to the dtype's rounding; peft_forwards gives peft's forwards back. Gemma-3 (#27): its
    embedding scales by sqrt(hidden) after the lookup, and its pause row still trains without the [vocab, hidden]
    copy."""
    if arch == "gemma3":
        tiny_dir = request.getfixturevalue("tiny_gemma_dir")
    import contextlib

    from pausetune.core.training.lora import (build_model, fused_lora, hold_frozen_weights, make_optimizer,
                                              peft_forwards, sparse_token_rows)
    from pausetune.core.training.objectives import train_step

    torch.set_num_threads(THREADS)
    tok = shard_tok(tiny_shards["pause"])
    batch, manifest = fixed_batch(tiny_shards["pause"], n=2)
    pid = manifest["pause_ids"][0]
    assert (batch == pid).any()  # the pause row is used
    cfg = load_cfg({"lr": 1e-2, "warmup_steps": 0, "scheduler": "constant", "max_steps": 5})["train"]
    runs = []
    for fast in (False, True):
        torch.manual_seed(0)
        model, _ = build_model(tiny_dir, tok, cfg, [pid], "special", "cpu")
        counts = None
        if fast:
            if amp:
                hold_frozen_weights(model, amp)
            counts = (sparse_token_rows(model), fused_lora(model))
        opt, sched = make_optimizer(model, cfg)
        ctx = torch.autocast(device_type="cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            # bf16: one step (Adam turns the bf16 noise of near-zero gradients into whole steps after it)
            steps = [train_step(model, [batch], opt, sched, cfg["max_grad_norm"]) for _ in range(1 if amp else 3)]
        runs.append((counts, steps, {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad},
                     model))
    (_, s0, p0, _), (counts, s1, p1, model) = runs
    assert counts == (2, 2 * 7)  # the embedding and its tied head; every projection of both layers
    tol = 2e-2 if amp else 1e-5
    for a, b in zip(s0, s1):
        assert a[0] == pytest.approx(b[0], rel=tol) and a[1] == pytest.approx(b[1], rel=10 * tol)
    delta = [k for k in p0 if "trainable_tokens_delta" in k]
    # fp32: the weights after three steps; in bf16 a near-zero gradient's sign is noise, and Adam's first step is
    # lr times that sign, so only the loss and the gradient norm above compare
    bad = {k: float((p0[k] - p1[k]).abs().max()) for k in p0 if not torch.allclose(p0[k], p1[k], atol=1e-3, rtol=0)}
    assert delta and (amp or not bad), bad
    assert not torch.equal(p1[delta[0]], torch.zeros_like(p1[delta[0]]))
    peft_forwards(model)
    assert not [n for n, m in model.named_modules() if "forward" in m.__dict__]


def test_pause_row_gradient_is_the_same_bits_every_run(tiny_dir, tiny_shards):
    """The pause row's gradient under sparse_token_rows, on 2 threads, repeated: the same bits each time (its gather
    once summed every token's gradient with atomic adds, so a pause arm's adapter differed between runs by ~1e-9)."""
    from pausetune.core.training.lora import build_model, sparse_token_rows

    torch.set_num_threads(THREADS)
    tok = shard_tok(tiny_shards["pause"])
    batch, manifest = fixed_batch(tiny_shards["pause"], n=4)
    pid = manifest["pause_ids"][0]
    assert (batch == pid).sum() > 4
    cfg = load_cfg()["train"]
    torch.manual_seed(0)
    model, _ = build_model(tiny_dir, tok, cfg, [pid], "special", "cpu")
    assert sparse_token_rows(model) == 2
    delta = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n and "embed_tokens" in n][0]
    grads = set()
    for _ in range(25):
        model.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()
        grads.add(delta.grad.numpy().tobytes())
    assert len(grads) == 1 and any(delta.grad.flatten() != 0)


def test_pause_row_trains_frozen_rows_stay_tied_head_follows_and_reload_gives_same_logits(tiny_dir, tiny_shards,
                                                                                        tmp_path):
    from pausetune.core.models import load_model
    from pausetune.core.tokens import fit_embeddings
    from pausetune.core.training.checkpoints import checkpoint_adapter_hash, load_checkpoint
    from pausetune.stages.train import train

    out = tmp_path / "ckpt" / "tiny" / "pause"
    cfg = load_cfg({**FAST, "lr": 1e-2, "autocast": "none"})  # the trained model is run in fp32 below
    manifest, trained = train("tiny", "pause", tiny_dir, tiny_shards["pause"], out, cfg, device="cpu",
                              progress=False, return_model=True)
    pid = manifest["pause_ids"][0]
    assert manifest["pause_row"] == {"trained": True, "ids": [pid], "layers": ["embed_tokens"],
                                     "output_row_trained": True, "method": "peft trainable_token_indices"}
    batch, _ = fixed_batch(tiny_shards["pause"])
    assert (batch == pid).any()
    trained.eval()
    with torch.no_grad():
        ref = trained(input_ids=batch).logits

    # unmerged reload: the very same computation
    m_unmerged, tok, man = load_checkpoint(tiny_dir, out, dtype="float32", device="cpu", merge=False)
    with torch.no_grad():
        assert torch.equal(m_unmerged(input_ids=batch).logits, ref)
    # merged reload (the default, what eval uses): a plain transformers model, logits equal up to fp32 rounding
    merged, tok, man = load_checkpoint(tiny_dir, out, dtype="float32", device="cpu")
    assert type(merged).__name__ == "LlamaForCausalLM" and not merged.training
    with torch.no_grad():
        got = merged(input_ids=batch).logits
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()
    assert man["adapter_sha256"] == checkpoint_adapter_hash(out)
    assert tok.convert_ids_to_tokens(pid) == "<PAUSE>"

    base = load_model(tiny_dir, "float32", "cpu")
    fit_embeddings(base, tok)
    w0 = base.get_input_embeddings().weight
    emb, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    frozen = int(torch.mode(batch.flatten()).values)  # the commonest token of the batch: it got gradients
    assert frozen != pid
    moved = (emb[pid] - w0[pid]).abs().max()
    assert moved > 1e-3, moved                                    # the pause row was trained
    assert torch.equal(emb[frozen], w0[frozen])                   # a frozen row that the batch used: untouched
    assert torch.equal(emb[:pid], w0[:pid])                       # ... and so is every old row
    # tied embeddings: the output row of the pause token followed the trained input row (same tensor)
    assert head.data_ptr() == emb.data_ptr() and torch.equal(head[pid], emb[pid])
    # the base weights under the LoRA stayed frozen; the merge adds the LoRA delta on top of them
    base_q = base.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(trained.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight, base_q)
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base_q)


def test_plain_variant_trains_lora_only_and_reloads_merged(tiny_dir, tiny_shards, tmp_path):
    from pausetune.core.training.checkpoints import load_checkpoint
    from pausetune.stages.train import train

    out = tmp_path / "plain"
    manifest, trained = train("tiny", "plain", tiny_dir, tiny_shards["plain"], out, load_cfg({**FAST, "max_steps": 2, "autocast": "none"}),
                              device="cpu", progress=False, return_model=True)
    assert manifest["pause_ids"] == [] and not manifest["pause_row"]["trained"]
    assert all("lora_" in n for n, p in trained.named_parameters() if p.requires_grad)
    assert manifest["trainable_params"] == sum(p.numel() for p in trained.parameters() if p.requires_grad)
    merged, tok, _ = load_checkpoint(tiny_dir, out, dtype="float32", device="cpu")
    assert "<PAUSE>" not in tok.get_vocab() and merged.get_input_embeddings().weight.shape[0] == len(tok)
    batch, _ = fixed_batch(tiny_shards["plain"], n=1)
    trained.eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=batch).logits, trained(input_ids=batch).logits, atol=1e-5, rtol=0)


def test_nf4_qlora_on_cpu_loss_falls_bf16_activations_and_adapter_saves(tiny_dir, tiny_shards, tmp_path):
    from pausetune.stages.train import train
    from pausetune.core.training.lora import build_model, make_optimizer
    from pausetune.core.training.objectives import train_step
    from pausetune.core.training.checkpoints import load_checkpoint

    torch.set_num_threads(THREADS)
    tok = shard_tok(tiny_shards["pause"])
    batch, manifest = fixed_batch(tiny_shards["pause"])
    cfg = load_cfg({"quantization": "nf4", "lr": 1e-2, "warmup_steps": 0, "scheduler": "constant"})["train"]
    torch.manual_seed(0)
    model, info = build_model(tiny_dir, tok, cfg, manifest["pause_ids"], "special", "cpu")
    assert info["quantized"]
    base = model.get_base_model()
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    # no fp32 upcast of the non-quantized base weights (norms, embeddings) ...
    fp = {n: p.dtype for n, p in model.named_parameters()
          if p.is_floating_point() and "lora_" not in n and "trainable_tokens" not in n}
    assert fp and all(d == torch.bfloat16 for d in fp.values()), {n: d for n, d in fp.items() if d != torch.bfloat16}
    # ... so the residual stream and attention run in bf16
    seen = []
    hook = base.model.layers[0].self_attn.register_forward_hook(lambda m, a, o: seen.append(o[0].dtype))
    opt, sched = make_optimizer(model, cfg)
    losses = [train_step(model, [batch], opt, sched, cfg["max_grad_norm"])[0] for _ in range(4)]
    hook.remove()
    assert set(seen) == {torch.bfloat16}
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.05, losses

    out = tmp_path / "nf4"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        man, trained = train("tiny", "pause", tiny_dir, tiny_shards["pause"], out,
                             load_cfg({**FAST, "max_steps": 2, "eval_every": 1, "quantization": "nf4"}), device="cpu",
                             progress=False, return_model=True)
    # a validation pass between training steps must not switch bitsandbytes to its autograd-less CPU kernel
    assert not [w for w in caught if "autograd kernel was not registered" in str(w.message)]
    assert man["quantized"] and (out / "adapter" / "adapter_model.safetensors").exists()
    reloaded, _, _ = load_checkpoint(tiny_dir, out, device="cpu", quantization="nf4")
    assert type(reloaded).__name__ == "PeftModelForCausalLM"  # 4-bit: the adapter stays unmerged
    mine = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    theirs = dict(reloaded.named_parameters())
    assert mine and all(torch.equal(p, theirs[n]) for n, p in mine.items())  # the adapter came back exactly
    trained.eval()
    with torch.no_grad():
        a = trained(input_ids=batch).logits
        b = reloaded(input_ids=batch).logits  # eval uses bitsandbytes' packed CPU inference kernel: close
        err = (a.float() - b.float()).abs().max()
        assert err < 0.02
        top2 = a.float().topk(2, dim=-1).values
        clear = (top2[..., 0] - top2[..., 1]) > 2 * err  # the greedy token, wherever the kernels' error cannot flip it
        assert clear.float().mean() > 0.5 and torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear])
        fresh, _, _ = load_checkpoint(tiny_dir, out, device="cpu", quantization="nf4")
        for mod in fresh.modules():  # the kernel training used: bitwise the in-memory model
            if hasattr(mod, "support_avx512bf16_for_cpu"):
                mod.support_avx512bf16_for_cpu = False
        assert torch.equal(fresh(input_ids=batch).logits, a)


def test_gpt2_style_targets_and_untied_head_pause_row():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from pausetune.core.io import PausetuneError
    from pausetune.core.training.lora import make_optimizer, prepare_peft
    from pausetune.core.training.objectives import train_step

    base_cfg = load_cfg()["train"]
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(PausetuneError) as e:
        prepare_peft(gpt2, base_cfg)
    msg = str(e.value)
    assert "\n" not in msg and "train.lora.target_modules" in msg and "c_attn" in msg and "c_fc" in msg
    cfg = {**base_cfg, "lora": {**base_cfg["lora"], "target_modules": ["c_attn", "c_proj", "c_fc"]}}
    model, info = prepare_peft(gpt2, cfg, [299], "special")
    assert info["pause_row"]["trained"] and info["tied_embeddings"] and info["pause_row"]["layers"] == ["wte"]
    ids = torch.randint(0, 300, (2, 32))
    opt, sched = make_optimizer(model, {**cfg, "warmup_steps": 0})
    loss, norm, _ = train_step(model, [ids], opt, sched, 1.0)
    assert loss > 0 and norm > 0

    # Qwen2: the paper's seven projection names, q/k/v with biases
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    model, info = prepare_peft(qwen, base_cfg, [299], "special")
    assert info["pause_row"]["output_row_trained"] and len(info["target_modules"]) == 7
    opt, sched = make_optimizer(model, {**base_cfg, "warmup_steps": 0})
    assert train_step(model, [ids], opt, sched, 1.0)[0] > 0

    # untied input/output embeddings (Llama-3.1-8B style): the head's pause row is trained as well
    torch.manual_seed(0)
    untied = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
    model, info = prepare_peft(untied, base_cfg, [299], "special")
    assert not info["tied_embeddings"] and info["pause_row"]["layers"] == ["embed_tokens", "lm_head"]
    ids[:, ::4] = 299
    deltas = {n: p.detach().clone() for n, p in model.named_parameters() if "trainable_tokens_delta" in n}
    assert len(deltas) == 2
    opt, sched = make_optimizer(model, {**base_cfg, "lr": 1e-2, "warmup_steps": 0})
    train_step(model, [ids], opt, sched, 1.0)
    for n, p in model.named_parameters():
        if n in deltas:
            assert not torch.equal(p, deltas[n]), n


# ---------------------------------------------------------------------------------------- real CLI runs
RESUME = {"max_steps": 6, "warmup_steps": 2, "batch_size": 1, "grad_accum": 2, "save_every": 2, "eval_every": 4,
          "eval_rows": 2, "threads": THREADS}


def train_args(tiny_config, tiny_dir, shards, out, variant="pause", train=None, extra=None) -> list[str]:
    return ["train", *tiny_config, "--config-json", json.dumps({"train": train or RESUME, **(extra or {})}),
            "--model", "tiny", "--variant", variant, "--model-dir", str(tiny_dir), "--shards", str(shards),
            "--output", str(out), "--no-progress"]


def test_cli_run_killed_with_sigkill_resumes_to_the_same_adapter(tiny_config, tiny_dir, tiny_shards, tmp_path):
    from pausetune.stages.train import train
    from pausetune.core.training.trainstate import state_dir_for

    shards = tiny_shards["pause"]
    # the uninterrupted reference (in this process: same code, same config, same thread count)
    ref = tmp_path / "ref" / "tiny" / "pause"
    m = train("tiny", "pause", tiny_dir, shards, ref, load_cfg(RESUME), device="cpu", progress=False)
    assert not state_dir_for(ref).exists() and m["resumed_from"] == []

    # a real `pausetune train`, SIGKILLed once the state of step 2 (or later) exists, then simply started again
    out = tmp_path / "run" / "tiny" / "pause"
    state = state_dir_for(out)
    cmd = [sys.executable, "-m", "pausetune.cli", *train_args(tiny_config, tiny_dir, shards, out)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        meta = state / "state.json"
        if meta.exists() and json.loads(meta.read_text())["step"] >= 2:
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    killed_at = json.loads((state / "state.json").read_text())["step"]
    assert killed_at in (2, 4) and not (out / "manifest.json").exists()

    proc = run_cli(*train_args(tiny_config, tiny_dir, shards, out))
    assert f"resuming from step {killed_at}" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(f"-> {out}")  # the final line says where it went
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["resumed_from"] == [killed_at] and not state.exists()
    assert not list(out.parent.glob(".*.tmp"))  # temp folders of the killed run were cleaned up
    a, b = adapter_tensors(ref), adapter_tensors(out)
    assert a.keys() == b.keys() and any("trainable_tokens" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise: same seed, CPU, fp32, same thread count
    assert m2["adapter_sha256"] == m["adapter_sha256"]
    # the whole adapter folder repeats, byte for byte, across processes (peft's set of target modules, sorted)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (ref / "adapter" / name).read_bytes() == (out / "adapter" / name).read_bytes(), name
    targets = json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(targets) and len(targets) == 7, targets
    assert m2["final_train_loss"] == m["final_train_loss"] and m2["final_val_loss"] == m["final_val_loss"]
    ref_log = [json.loads(line) for line in (ref / "train_log.jsonl").read_text().splitlines()]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("loss", r.get("val_loss")) for r in log] == [r.get("loss", r.get("val_loss")) for r in ref_log]

    # the checkpoint folder, its manifest and its log
    assert {p.name for p in out.iterdir()} == {"adapter", "tokenizer", "train_log.jsonl", "manifest.json",
                                              ".pausetune-output"}  # the pipeline's own: a rerun may replace it
    assert (out / "tokenizer" / "tokenizer.json").exists()
    for key in ("train", "seed", "shards", "packages", "wall_time_s", "final_train_loss", "final_val_loss",
                "trainable_params", "adapter_sha256", "pause_ids", "steps", "tokens_seen", "peak_mem_mb"):
        assert m2.get(key) is not None, key
    assert m2["shards"]["manifest_sha256"] and m2["shards"]["dataset_sha256"] and m2["packages"]["torch"]
    assert m2["train"]["lr"] == 2e-4 and m2["train"]["lora"]["r"] == 16 and m2["steps"] == RESUME["max_steps"]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, RESUME["max_steps"] + 1))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_mb"):
        assert all(r[key] is not None for r in steps), key
    assert steps[0]["lr"] == 0.0 and steps[2]["lr"] == pytest.approx(2e-4)  # linear warmup over 2 steps
    assert [r["step"] for r in log if "val_loss" in r] == [4, 6]


def test_training_seed_sets_the_run_not_the_data(tiny_config, tiny_dir, tiny_shards, tmp_path):
    """--train-seed (one of train.seeds; default its first) seeds the LoRA init and the data order on the same shards:
    two seeds, two adapters; no flag is seed 0's very run; a seed outside train.seeds is one line, before training."""
    train = {**FAST, "max_steps": 2, "seeds": [0, 1]}
    runs = {"0": tmp_path / "tseed0", "1": tmp_path / "tseed1", None: tmp_path / "default"}
    for n, out in runs.items():
        run_cli(*train_args(tiny_config, tiny_dir, tiny_shards["plain"], out, "plain", train),
                *(["--train-seed", n] if n is not None else []))
    m = {n: json.loads((out / "manifest.json").read_text()) for n, out in runs.items()}
    assert [m[n]["train_seed"] for n in ("0", "1", None)] == [0, 1, 0]
    assert m["0"]["shards"] == m["1"]["shards"]  # the same data ...
    assert m["0"]["adapter_sha256"] != m["1"]["adapter_sha256"]  # ... another run
    a, b = adapter_tensors(runs["0"]), adapter_tensors(runs["1"])
    assert a.keys() == b.keys() and all(not torch.equal(a[k], b[k]) for k in a if "lora_A" in k)  # another init
    assert m[None]["adapter_sha256"] == m["0"]["adapter_sha256"]
    out = tmp_path / "tseed2"
    proc = run_cli(*train_args(tiny_config, tiny_dir, tiny_shards["plain"], out, "plain", train), "--train-seed", "2",
                   check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "pausetune train: error: --train-seed 2: not in config key 'train.seeds' [0, 1]"], proc.stderr
    assert not out.exists() and not (tmp_path / "tseed2.state").exists()


def _with_other_tokenizer(tiny_dir: Path, dest: Path) -> Path:
    from transformers import AutoTokenizer

    shutil.copytree(tiny_dir, dest)
    tok = AutoTokenizer.from_pretrained(dest)
    tok.add_tokens(["<not-in-the-shards>"])
    tok.save_pretrained(dest)
    return dest


def _pause_shards_without_pause_token(tiny_dir: Path, shards: Path, dest: Path) -> Path:
    from transformers import AutoTokenizer

    shutil.copytree(shards, dest)
    shutil.rmtree(dest / "tokenizer")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(dest / "tokenizer")
    return dest


@pytest.mark.parametrize("case", ["other_tokenizer", "plain_shards_as_pause", "no_pause_token", "seq_len",
                                  "target_modules"])
def test_cli_bad_inputs_fail_in_one_line_before_training(case, tiny_config, tiny_dir, tiny_shards, tmp_path):
    model_dir, shards, variant, extra = tiny_dir, tiny_shards["pause"], "pause", {}
    train = {"max_steps": 1, "threads": THREADS}
    expect = {
        "other_tokenizer": "shards were made with another tokenizer",
        "plain_shards_as_pause": "shards were made for variant 'plain' and have no pause token",
        "no_pause_token": "pause token '<PAUSE>' missing",
        "seq_len": "seq_len 128 exceeds the maximum context 64",
        "target_modules": "its linear modules are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj",
    }[case]
    if case == "other_tokenizer":
        model_dir = _with_other_tokenizer(tiny_dir, tmp_path / "other")
    elif case == "plain_shards_as_pause":
        shards = tiny_shards["plain"]
    elif case == "no_pause_token":
        shards = _pause_shards_without_pause_token(tiny_dir, tiny_shards["pause"], tmp_path / "shards")
    elif case == "seq_len":
        extra = {"models": {"tiny": {"max_context": 64}}}
    else:
        train["lora"] = {"target_modules": ["c_attn", "q_proj"]}
    out = tmp_path / "out"
    proc = run_cli(*train_args(tiny_config, model_dir, shards, out, variant, train, extra), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("pausetune train: error: ") and expect in lines[0], proc.stderr
    assert not out.exists() and not (tmp_path / "out.state").exists()


@pytest.mark.parametrize("old", [False, True])
def test_breakdown_bench_puts_a_steps_time_in_categories(tiny_dir, capsys, old):
    """bench/breakdown.py train (issue #25): today's and the old path's step on padded rows of two lengths, every
    category in one table."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("breakdown", ROOT / "bench" / "breakdown.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["train", "--model-dir", str(tiny_dir), "--lengths", "24,40", "--steps", "1", "--threads", "1",
                     "--autocast", "none", *(["--old"] if old else [])]) == 0
    out = capsys.readouterr().out
    assert ("old path" in out) == old and "rows of [24, 40] tokens" in out
    for cat in ("linear GEMM (frozen base)", "LoRA GEMM (rank 16)", "attention backward", "optimizer",
                "Python and dispatch"):
        assert cat in out, cat
