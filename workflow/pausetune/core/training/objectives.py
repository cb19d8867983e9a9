"""Training objectives and their data: the causal-LM loss over packed essay rows (`lm`) and the paper's
supervised retrieval (`retrieval`: loss on the answer span only, or on every token). Each objective is a whole
strategy: the folder it trains on and the checks on it, its loss; then one optimizer step, the validation loss,
collation, and the stateless data order.

The step loss is the exact mean over the step's loss tokens, and the LM head runs only on the hidden states that
carry a label (`masked_loss`): with answer-only loss that is a few dozen positions of a 2K-token example, not a
[T, vocabulary] logit tensor. The data order is stateless: global row g is row `perm(epoch)[g % N]` with
`perm(epoch)` a permutation seeded by (seed, epoch), so epochs are reshuffled and a resumed run reads exactly the
rows an uninterrupted run would.
"""
from __future__ import annotations

import random
from pathlib import Path

from ..io import PausetuneError


class LM:
    """Causal-LM loss over packed rows (LongTensors [B, T], all of one length): the mean over a micro-batch's
    B*(T-1) predicted tokens; the step's loss is the mean of its micro-batch means, which is the exact token mean
    since every row has the same length."""
    name = "lm"
    made_by = "a shard folder made by `pausetune shards`"

    @staticmethod
    def check_data(manifest: dict, mpath, config: dict, window: int, model_name: str) -> None:
        """Nothing beyond the checks every objective shares (the rows' length against the window)."""

    @staticmethod
    def check_model(model, model_name: str) -> None:
        """The full causal-LM loss runs the model's own head: any head will do."""

    @staticmethod
    def check_pauses(data: TrainData, pause_ids: list[int], folder) -> None:
        """A pause checkpoint must see pauses: some train row holds a pause id."""
        import numpy as np

        if not np.isin(np.asarray(data.raw.with_format("numpy")["input_ids"]), pause_ids).any():
            raise PausetuneError(f"{folder}: variant 'pause' but no pause id {pause_ids} occurs in the train rows")

    @staticmethod
    def pieces(batch) -> list:
        """Rows of one length need no padding: the micro-batch runs whole."""
        return [batch]

    @staticmethod
    def loss(model, ids):
        """The mean over the B*(T-1) predicted tokens. Through masked_loss where the head is a plain linear map: the
        same sum without transformers' shifted fp32 copy of the [B, T, vocabulary] logits (and its backward), a
        sixth of a 2 x 2048 SmolLM2 step (bench/breakdown.py); the model's own loss otherwise."""
        if plain_head(model):
            total, n = masked_loss(model, ids, None, ids)
            return total / n
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    @staticmethod
    def divisor(micro_batches) -> int:
        return len(micro_batches)

    @staticmethod
    def tokens(micro_batches) -> int:
        return sum(int(ids.numel()) for ids in micro_batches)

    @staticmethod
    def total(model, ids) -> tuple[float, int]:
        """(summed loss, count) of a validation batch: row means weighted by rows."""
        return float(LM.loss(model, ids)) * len(ids), len(ids)


class Retrieval:
    """Loss on the labelled tokens of right-padded (ids, mask, labels) batches: the step's loss is the exact mean
    over all of its loss tokens (answer spans differ in length)."""
    name = "retrieval"
    made_by = "an examples folder made by `pausetune examples`"

    @staticmethod
    def check_data(manifest: dict, mpath, config: dict, window: int, model_name: str) -> None:
        """The examples were drawn from the config's needle banks and fit the model's window."""
        from ..data.banks import bank, bank_hash

        for which in ("train", "eval"):
            if manifest.get("banks", {}).get(which, {}).get("sha256") != bank_hash(bank(config, which)):
                raise PausetuneError(f"{mpath}: made from another {which} needle bank than config 'banks' says; "
                                     f"rebuild the examples")
        if int(manifest["lengths"]["max"]) > window:
            raise PausetuneError(f"{mpath}: example lengths up to {manifest['lengths']['max']} exceed the maximum "
                                 f"context {window} of model '{model_name}' (config key 'examples.lengths.max')")

    @staticmethod
    def check_model(model, model_name: str) -> None:
        """The loss applies the LM head alone on the loss positions: a head that does more is refused."""
        key = head_extra(model)
        if key:
            raise PausetuneError(f"model '{model_name}': its head applies {key}, which the retrieval loss "
                                 f"(LM head on the loss positions only) does not; use train.objective lm")

    @staticmethod
    def check_pauses(data: TrainData, pause_ids: list[int], folder) -> None:
        """A pause checkpoint must see pauses: some example holds a pause marker."""
        if not any(data.raw["pause_positions"]):
            raise PausetuneError(f"{folder}: variant 'pause' but no pause marker occurs in the examples")

    @staticmethod
    def pieces(batch) -> list:
        """Each row of a right-padded micro-batch alone, cut to its real length, with no attention mask.

        The step's loss is a sum over loss tokens divided by their count, so summing the gradients row by row is the
        same loss as the padded batch (to the dtype's rounding: the GEMMs have other shapes) without computing the
        padding (up to half a micro-batch of two rows of 256-512 tokens), and an unmasked causal forward takes
        SDPA's flash path instead of a masked one. One row's activations at a time, too."""
        ids, mask, labels = batch
        out = []
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            out.append((ids[i:i + 1, :n], None, labels[i:i + 1, :n]))
        return out

    @staticmethod
    def loss(model, batch):
        return masked_loss(model, *batch)[0]

    @staticmethod
    def divisor(micro_batches) -> int:
        return max(sum(int((labels[:, 1:] != -100).sum()) for _, _, labels in micro_batches), 1)

    @staticmethod
    def tokens(micro_batches) -> int:
        return sum(int(mask.sum()) for _, mask, _ in micro_batches)

    @classmethod
    def total(cls, model, batch) -> tuple[float, int]:
        loss, n = 0.0, 0
        for piece in cls.pieces(batch):
            s, k = masked_loss(model, *piece)
            loss, n = loss + float(s), n + k
        return loss, n


class PaddedRetrieval(Retrieval):
    """Retrieval on the padded micro-batch, as before issue #25: the baseline benches and tests compare against."""

    @staticmethod
    def pieces(batch) -> list:
        return [batch]


OBJECTIVES = {"lm": LM, "retrieval": Retrieval}


def train_step(model, micro_batches, optimizer, scheduler, max_grad_norm: float | None, objective=LM):
    """One optimizer step over `micro_batches`; returns (loss, grad_norm, lr), lr being the rate this step used."""
    import torch

    model.train()
    divisor = objective.divisor(micro_batches)
    total = 0.0
    for batch in micro_batches:
        for piece in objective.pieces(batch):
            loss = objective.loss(model, piece)
            (loss / divisor).backward()
            total += float(loss.detach())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / divisor, float(norm), float(lr)


def validation_loss(model, batches, objective=LM) -> float | None:
    """Mean loss over validation batches (per row for lm, per loss token for retrieval); None when there are none."""
    import torch

    if not batches:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            s, n = objective.total(model, batch)
            total, count = total + s, count + n
    model.train(was_training)
    return total / max(count, 1)


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


def head_extra(model) -> str | None:
    """The config key of what a model's head does beyond a linear map (logit soft-capping, scaling), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for key in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(base.config, key, None) not in (None, 1, 1.0):
            return key
    return None


def plain_head(model) -> bool:
    return head_extra(model) is None


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


class TrainData:
    """The rows one run trains on, and how a list of row indices becomes a micro-batch on the device."""

    def __init__(self, folder: Path, objective, pad_id: int, loss_on: str, eval_rows: int | None):
        from ..data.shardfiles import load_shards

        dd, _ = load_shards(str(folder))
        self.objective, self.pad_id, self.loss_on = objective, pad_id, loss_on
        retrieval = objective is Retrieval
        self.rows = dd["train"] if retrieval else dd["train"].with_format("torch")
        self.raw = dd["train"]
        n_val = len(dd["validation"]) if "validation" in dd else 0
        self.n_val = min(n_val, eval_rows) if eval_rows else n_val
        if not self.n_val:
            self.val = None
        elif retrieval:
            self.val = [dd["validation"][i] for i in range(self.n_val)]
        else:
            self.val = dd["validation"].with_format("torch")[:self.n_val]["input_ids"].long()

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: list[int], device):
        if self.objective is Retrieval:
            return tuple(t.to(device) for t in collate([self.rows[j] for j in idx], self.pad_id, self.loss_on))
        return self.rows[idx]["input_ids"].long().to(device)

    def val_batches(self, batch_size: int, device) -> list:
        if self.val is None:
            return []
        if self.objective is Retrieval:
            return [tuple(t.to(device) for t in collate(self.val[i:i + batch_size], self.pad_id, self.loss_on))
                    for i in range(0, len(self.val), batch_size)]
        return [self.val[i:i + batch_size].to(device) for i in range(0, len(self.val), batch_size)]


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
