"""Stage `train`: LoRA / QLoRA pause-tuning of one (model, variant, training seed) checkpoint.

The training seed (`--train-seed`, one of config `train.seeds`) sets the LoRA init, the data order and (retrieval)
which examples were drawn (stage `examples` of the same seed); nothing of the evaluation depends on it.

results/checkpoints/{model}/{variant}/tseed{seed}/ holds
- `adapter/`: the peft LoRA adapter (safetensors; in the `pause` variant with the trained pause-token row),
- `tokenizer/`: the tokenizer the shards were made with (pause token included): eval loads exactly it,
- `train_log.jsonl`: one line per optimizer step (loss, lr, grad norm, tokens/s, peak memory) and one per
  validation pass (`val_loss`),
- `manifest.json`: resolved train config, shard hashes, seed, package versions, wall time, final losses, counts.
The folder is written with `atomic_dir`: it appears complete or not at all.

The recipe (every value from config `train`): peft LoRA on the configured projections of a frozen base
(core.training.lora: targets, the trainable pause row, QLoRA), AdamW (torch) with decoupled weight decay on the LoRA
weights, clipped gradients, a linear (or cosine / constant) schedule with warmup, `grad_accum` micro-batches of
`batch_size` rows per optimizer step, in a stateless seeded data order (core.training.objectives). The same step
in fewer passes (issue #25, core.training.lora): under autocast the frozen base is held in bf16 once, the pause row
trains without copying the embedding, each LoRA update is added inside its GEMM.

Objective (config `train.objective`, core.training.objectives): `lm` is the causal-LM loss over packed essay rows of
`--shards`; `retrieval` (the paper's) trains on `--examples` (stage `examples`: an essay context with a hidden
needle, the question, the answer), each row at its own length (no padding), loss on the answer span only (`train.loss_on:
answer`) or on every token (`all`).

Resumable (core.training.trainstate): every `save_every` steps the training state (trainable weights, optimizer, scheduler,
RNG, step) goes atomically into `{output}.state/` (beside the output, so Snakemake does not delete it on failure). A job
killed at any point and started again continues from the last saved step and reaches bitwise the same adapter
on the CPU (same seed, fp32, same thread count). A state from a different run (another recipe, core.training.recipe, or
other inputs or code) is discarded. After a successful finish the state folder is removed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core import layout
from ..core.training.checkpoints import dir_hashes, training_metrics
from ..core.config import TrainConfig, train_seed_of
from ..core.design import TRAIN_VARIANTS
from ..core.fingerprint import code_record, fingerprint, package_versions
from ..core.io import PausetuneError, atomic_dir, read_json, sha256_file, write_json, write_text
from ..core.kernels import autocast_dtype, default_device, set_threads
from ..core.training.lora import (build_model, check_target_modules, fused_lora, hold_frozen_weights, make_optimizer,
                                  meta_model, peak_memory_mb, peft_forwards, sparse_token_rows)
from ..core.training.objectives import OBJECTIVES, DataOrder, Retrieval, TrainData, train_step, validation_loss
from ..core.training.recipe import recipe
from ..core.training.trainstate import (DamagedState, canonical_adapter_config, load_state, restore_state, save_state,
                               state_dir_for)


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
    from ..core.tokens import check_pause_settings, pause_token, setup_pause, tokenizer_fingerprint

    if variant not in TRAIN_VARIANTS:
        raise PausetuneError(f"train variant '{variant}': expected one of {TRAIN_VARIANTS}")
    entry = model_entry(config, model_name)
    model_dir, shard_dir = Path(model_dir), Path(shard_dir)
    if not (model_dir / "prepared.json").exists():
        raise PausetuneError(f"{model_dir}/prepared.json: missing (run `pausetune prepare-model --model {model_name}`)")
    mpath = shard_dir / "manifest.json"
    cfg = TrainConfig.of(config)
    objective = OBJECTIVES[cfg.objective]
    if not mpath.exists():
        raise PausetuneError(f"{mpath}: missing (expected {objective.made_by})")
    manifest = read_json(mpath)
    if manifest.get("objective") != cfg.objective:
        raise PausetuneError(f"{mpath}: made for objective '{manifest.get('objective')}', config key "
                             f"'train.objective' is '{cfg.objective}' (retrieval trains on --examples, lm on --shards)")
    made_as = manifest.get("variant")
    if made_as != variant:
        extra = " and have no pause token" if variant == "pause" else ""
        raise PausetuneError(f"{mpath}: shards were made for variant '{made_as}'{extra}; "
                             f"train --variant {variant} needs shards of variant '{variant}'")
    tok = _load_shard_tokenizer(shard_dir)
    fp = manifest.get("tokenizer_fingerprint")
    pause_ids = [int(i) for i in manifest.get("pause_ids") or []]
    if variant == "pause":
        if not pause_ids:
            raise PausetuneError(f"{mpath}: variant 'pause' but 'pause_ids' is empty (no pause token in these shards)")
        check_pause_settings(manifest.get("pause"), config, mpath, "rebuild the shards")
        token = pause_token(config["pause"])
        if token is not None and (token not in tok.get_vocab() or tok.convert_tokens_to_ids(token) != pause_ids[0]):
            raise PausetuneError(f"{shard_dir}/tokenizer: pause token '{token}' missing or not id {pause_ids[0]} "
                                 f"(manifest pause_ids); rebuild the shards")
    if tokenizer_fingerprint(tok) != fp:
        raise PausetuneError(f"{shard_dir}/tokenizer: fingerprint {tokenizer_fingerprint(tok)} does not match "
                             f"the shard manifest's {fp} (a damaged shard folder); rebuild the shards")
    base_tok = load_tokenizer(model_dir)
    if variant == "pause":
        setup_pause(base_tok, config["pause"])
    if tokenizer_fingerprint(base_tok) != fp:
        raise PausetuneError(
            f"{mpath}: shards were made with another tokenizer (fingerprint {fp}) than model '{model_name}' "
            f"in {model_dir} ({tokenizer_fingerprint(base_tok)} with the shards' pause token added); "
            f"rebuild the shards for this model")
    window = max_context(model_dir, entry)
    objective.check_data(manifest, mpath, config, window, model_name)
    if int(manifest["seq_len"]) > window:
        raise PausetuneError(f"{mpath}: seq_len {manifest['seq_len']} exceeds the maximum context {window} of "
                             f"model '{model_name}' (config key 'shards.seq_len' or 'models.{model_name}.max_context')")
    if not manifest.get("splits", {}).get("train", {}).get("rows"):
        raise PausetuneError(f"{mpath}: no training rows")
    check_target_modules(meta_model(model_dir), cfg.lora.target_modules)
    return {"entry": entry, "shard_manifest": manifest, "tokenizer": tok, "pause_ids": pause_ids,
            "max_context": window}


# ------------------------------------------------------------------------------------------------- train
@dataclass
class Run:
    """One training run: made by `setup`, advanced by `loop`, written by `finalize`."""
    name: str
    variant: str
    cfg: TrainConfig
    seed: int
    device: str
    model_dir: Path
    data_dir: Path
    output: Path
    checked: dict
    data: TrainData
    model: object
    info: dict
    optimizer: object
    scheduler: object
    amp_dtype: str | None
    run_key: str
    t_start: float
    step: int = 0
    log: list = field(default_factory=list)
    resumed_from: list = field(default_factory=list)
    prior_train_s: float = 0.0
    train_s: float = 0.0

    @property
    def state_dir(self) -> Path:
        return state_dir_for(self.output)

    def amp(self):
        """bf16 matmuls over fp32 weights (AMX / AVX512_BF16 / tensor cores); fp32 master weights and optimizer."""
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=getattr(torch, self.amp_dtype))

    def val_loss(self) -> float | None:
        with self.amp():
            return validation_loss(self.model, self.data.val_batches(self.cfg.batch_size, self.device),
                                   self.data.objective)


def _fresh_model(run_args: dict, cfg: TrainConfig, seed: int):
    """Seeded model, optimizer and scheduler: the same for a new run and for one that starts over."""
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    model, info = build_model(cfg=cfg, **run_args)
    info["autocast"] = autocast_dtype(cfg.autocast, info["dtype"], str(run_args["device"]))
    if info["autocast"]:  # the frozen base in the autocast dtype once, not cast at every forward
        info["frozen_linears_held_in"] = {"dtype": info["autocast"],
                                          "modules": hold_frozen_weights(model, info["autocast"])}
    info["sparse_token_layers"] = sparse_token_rows(model)  # the pause row without copying the embedding
    info["fused_lora_layers"] = fused_lora(model)  # scale and add of each LoRA update inside its GEMM
    return (model, info, *make_optimizer(model, cfg))


def setup(model_name: str, variant: str, model_dir: str | Path, data_dir: str | Path, output: str | Path,
          config: dict, device: str | None = None, threads: int | None = None, train_seed: int | None = None) -> Run:
    """Check the inputs, load the data and the model, and restore the saved state of this exact run if any."""
    t_start = time.time()
    cfg = TrainConfig.of(config)
    set_threads(threads or cfg.threads)
    seed, device = train_seed_of(config, train_seed), device or default_device()
    output, data_dir, model_dir = Path(output), Path(data_dir), Path(model_dir)
    checked = check_inputs(model_name, variant, model_dir, data_dir, config)
    drawn_with = checked["shard_manifest"].get("train_seed")
    if cfg.objective == "retrieval" and drawn_with is not None and int(drawn_with) != seed:
        raise PausetuneError(f"{data_dir}/manifest.json: examples drawn for training seed {drawn_with}, this run's "
                             f"is {seed} (--train-seed): pass the examples of seed {seed}")
    if cfg.dtype == "auto":  # like eval: the model entry's dtype, then the machine's rule
        cfg = cfg.replace(dtype=checked["entry"]["dtype"])
    tok, pause_ids = checked["tokenizer"], checked["pause_ids"]
    objective = OBJECTIVES[cfg.objective]
    data = TrainData(data_dir, objective, tok.pad_token_id, cfg.loss_on, cfg.eval_rows)
    if variant == "pause":
        objective.check_pauses(data, pause_ids, data_dir)
    run_key = hashlib.sha256(json.dumps({
        "recipe": recipe(cfg.to_dict()), "seed": seed, "variant": variant, "model": model_name,
        "shards": sha256_file(data_dir / "manifest.json"), "prepared": sha256_file(model_dir / "prepared.json"),
        "device": str(device).split(":")[0], "code": fingerprint(__name__),  # never resume another code's state
    }, sort_keys=True).encode()).hexdigest()[:16]

    model_args = dict(model_dir=model_dir, tokenizer=tok, pause_ids=pause_ids, device=device,
                      pause_mode=(checked["shard_manifest"].get("pause") or {}).get("mode"))
    model, info, optimizer, scheduler = _fresh_model(model_args, cfg, seed)
    objective.check_model(model, model_name)
    run = Run(model_name, variant, cfg, seed, device, model_dir, data_dir, output, checked, data, model, info,
              optimizer, scheduler, info["autocast"], run_key, t_start)

    meta = load_state(run.state_dir, run_key)
    if meta is not None:
        try:
            restore_state(run.state_dir, model, optimizer, scheduler)
        except DamagedState as e:  # the only state kept is unreadable: start over, as a fresh run would
            print(f"train {model_name}/{variant}: {run.state_dir}: damaged training state ({e}); starting over from "
                  f"step 0", file=sys.stderr)
            shutil.rmtree(run.state_dir, ignore_errors=True)
            meta = None
            run.model, run.info, run.optimizer, run.scheduler = _fresh_model(model_args, cfg, seed)
    if meta is not None:
        run.step, run.log = int(meta["step"]), list(meta["log"])
        run.resumed_from = list(meta.get("resumed_from", [])) + [run.step]
        run.prior_train_s = float(meta.get("train_time_s", 0.0))
        print(f"train {model_name}/{variant}: resuming from step {run.step} ({run.state_dir})", file=sys.stderr)
    return run


def loop(run: Run, progress: bool = True) -> None:
    """The optimizer steps, from `run.step` to train.max_steps: log each, validate and save the state on schedule."""
    import torch
    from tqdm.auto import tqdm

    cfg, data, device = run.cfg, run.data, run.device
    bs, accum = cfg.batch_size, cfg.grad_accum
    order = DataOrder(len(data), run.seed)
    tokens_seen = next((int(r["tokens"]) for r in reversed(run.log) if "tokens" in r), 0)
    bar = tqdm(total=cfg.max_steps, initial=run.step, desc=f"train {run.name}/{run.variant}", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    t_loop = time.time()
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    while run.step < cfg.max_steps:
        t0 = time.time()
        first = run.step * accum * bs  # stateless data order: a resumed run reads the rows this step would
        micro = [data.batch(order.rows(first + k * bs, bs), device) for k in range(accum)]
        with run.amp():
            loss, gnorm, lr = train_step(run.model, micro, run.optimizer, run.scheduler, cfg.max_grad_norm,
                                         data.objective)
        tokens = data.objective.tokens(micro)
        tokens_seen += tokens
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.time() - t0
        run.step += 1
        mem, mem_kind = peak_memory_mb(device)
        rec = {"step": run.step, "loss": loss, "lr": lr, "grad_norm": gnorm, "tokens": tokens_seen,
               "tokens_per_s": tokens / dt if dt > 0 else None, "step_time_s": dt,
               "peak_mem_mb": round(mem, 1), "mem_kind": mem_kind}
        run.log.append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        last = run.step >= cfg.max_steps
        if cfg.eval_every and run.step % cfg.eval_every == 0 and not last and data.val is not None:
            v = run.val_loss()
            run.log.append({"step": run.step, "val_loss": v, "val_rows": data.n_val})
            bar.write(f"step {run.step}: validation loss {v:.4f} ({data.n_val} rows)", file=sys.stderr)
        if cfg.save_every and run.step % cfg.save_every == 0 and not last:
            save_state(run.state_dir, run.model, run.optimizer, run.scheduler, run.step, run.run_key, run.log,
                       {"resumed_from": run.resumed_from, "train_time_s": run.prior_train_s + time.time() - t_loop})
    bar.close()
    run.train_s = run.prior_train_s + time.time() - t_loop


def finalize(run: Run, config: dict) -> dict:
    """The last validation pass, then the checkpoint folder, written atomically; the saved state goes."""
    import torch

    from ..core.models import resolve_path

    val = run.val_loss() if run.data.val is not None else None
    peft_forwards(run.model)  # peft's own forwards from here on, as a reloaded checkpoint runs
    if val is not None:
        run.log.append({"step": run.step, "val_loss": val, "val_rows": run.data.n_val})
    mem, mem_kind = peak_memory_mb(run.device)
    cfg, smanifest, retrieval = run.cfg, run.checked["shard_manifest"], run.data.objective is Retrieval
    _, prepared = resolve_path(run.model_dir)
    with atomic_dir(run.output) as tmp:
        run.model.save_pretrained(str(tmp / "adapter"), safe_serialization=True, save_embedding_layers=False)
        canonical_adapter_config(tmp / "adapter" / "adapter_config.json")
        run.checked["tokenizer"].save_pretrained(str(tmp / "tokenizer"))
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in run.log))
        manifest = {
            "code": code_record(__name__),
            "model": run.name,
            "variant": run.variant,
            "seed": run.seed,
            "train_seed": run.seed,
            "train": cfg.to_dict(),
            "pause": config.get("pause"),
            "model_entry": run.checked["entry"],
            "base_model": {k: prepared.get(k) for k in ("name", "kind", "source", "commit", "gguf_sha256")},
            "device": str(run.device),
            "threads": torch.get_num_threads(),
            "objective": cfg.objective,
            "loss_on": cfg.loss_on if retrieval else "all",
            **({"retrieval": {k: smanifest.get(k) for k in ("template", "layout", "answer", "answer_span",
                                                            "lengths", "length_unit", "depths",
                                                            "needles_per_example", "banks")}} if retrieval else {}),
            ("examples" if retrieval else "shards"): {
                "path": str(run.data_dir),
                "manifest_sha256": sha256_file(run.data_dir / "manifest.json"),
                "dataset_sha256": dir_hashes(run.data_dir / "dataset"),
                "tokenizer_fingerprint": smanifest.get("tokenizer_fingerprint"),
                "seq_len": int(smanifest["seq_len"]),
                "train_rows": len(run.data),
                "validation_rows_used": run.data.n_val,
            },
            "pause_ids": run.checked["pause_ids"],
            "steps": run.step,
            "tokens_seen": next((int(r["tokens"]) for r in reversed(run.log) if "tokens" in r), 0),
            "epochs_seen": run.step * cfg.batch_size * cfg.grad_accum / len(run.data),
            "final_train_loss": next((r["loss"] for r in reversed(run.log) if "loss" in r), None),
            "final_val_loss": val,
            "first_train_loss": next((r["loss"] for r in run.log if "loss" in r), None),
            "peak_mem_mb": round(mem, 1),
            "mem_kind": mem_kind,
            "train_time_s": round(run.train_s, 3),
            "wall_time_s": None,
            "resumed_from": run.resumed_from,
            "run_key": run.run_key,
            "adapter_sha256": sha256_file(tmp / "adapter" / "adapter_model.safetensors"),
            "packages": package_versions(),
            **run.info,
        }
        manifest["wall_time_s"] = round(time.time() - run.t_start, 3)
        write_json(tmp / "manifest.json", manifest)
    shutil.rmtree(run.state_dir, ignore_errors=True)
    return manifest


def train(model_name: str, variant: str, model_dir: str | Path, data_dir: str | Path, output: str | Path,
          config: dict, device: str | None = None, threads: int | None = None, progress: bool = True,
          return_model: bool = False, train_seed: int | None = None):
    """Train one checkpoint into `output` (atomically); return its manifest (and the peft model if asked)."""
    run = setup(model_name, variant, model_dir, data_dir, output, config, device, threads, train_seed)
    loop(run, progress)
    manifest = finalize(run, config)
    return (manifest, run.model) if return_model else manifest


# --------------------------------------------------------------------------------------------------- CLI
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
    p.add_argument("--train-seed", type=int, default=None,
                   help="the training seed, one of config train.seeds (default: its first)")
    p.add_argument("--model-dir", required=True, help=layout.MODEL)
    p.add_argument("--shards", default=None, help=f"{layout.SHARDS} (train.objective lm)")
    p.add_argument("--examples", default=None, help=f"{layout.EXAMPLES} (train.objective retrieval)")
    p.add_argument("--output", required=True, help=layout.CHECKPOINT)
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (overrides config train.threads)")
    p.add_argument("--save-every", type=int, default=None,
                   help="steps between resumable states (overrides config train.save_every)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--metrics", default=None, help="also write the final losses here (flat JSON, for dvc metrics)")
    p.add_argument("--loss-curve", default=None, help="also write the loss per step here (CSV, for dvc plots)")


def main(args, config: dict) -> int:
    if args.save_every:  # run-only (core.training.recipe): the rule passes it apart from the recipe, so it never retrains
        config["train"]["save_every"] = args.save_every
    objective = TrainConfig.of(config).objective
    data = args.examples if objective == "retrieval" else args.shards
    if not data:
        want = f"--examples {layout.EXAMPLES}" if objective == "retrieval" else f"--shards {layout.SHARDS}"
        raise PausetuneError(f"config key 'train.objective' is '{objective}': pass {want}")
    m = train(args.model, args.variant, args.model_dir, data, args.output, config, device=args.device,
              threads=args.threads, progress=not args.no_progress, train_seed=args.train_seed)
    write_metrics(args.output, args.metrics, args.loss_curve)
    val = f"{m['final_val_loss']:.4f}" if m["final_val_loss"] is not None else "n/a"
    print(f"train {args.model}/{args.variant} tseed{m['train_seed']}: {m['steps']} steps, {m['tokens_seen']} tokens, "
          f"loss {m['first_train_loss']:.4f} -> {m['final_train_loss']:.4f}, validation loss {val}, "
          f"{m['trainable_params']} trainable params, {m['train_time_s']:.0f} s -> {args.output}")
    return 0
