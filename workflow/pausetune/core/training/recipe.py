"""What makes a checkpoint: the one list of `train` keys that change it (its weights, its log, its manifest).

The other `train` keys only say how a run goes: which models get one, torch threads, the scheduler's resources,
how often a resumable state is saved. Changing one of them never retrains. From this list come the run key of a
training state (stages/train.py: a state saved under another recipe is never resumed), the train rule's params
(workflow/rules/train.smk: a changed recipe key retrains, any other key does not) and the train stage's params
in dvc.yaml (written by scripts/dvc_code_deps.py; tests/test_code_identity.py compares them). A key added to the
schema is a recipe key unless it is named here as run-only: a new knob retrains until someone says otherwise.
"""
from __future__ import annotations

from dataclasses import fields

from ..config import TrainConfig

RUN_ONLY_KEYS = ("models", "seeds", "threads", "resources", "save_every")  # seeds: each run its own --train-seed
RECIPE_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in RUN_ONLY_KEYS)
ONLY_UNDER = {"loss_on": "retrieval"}  # read by one objective only (the lm loss is on every token)


def recipe(train: dict) -> dict:
    """The recipe of a schema-filled `train` section: RECIPE_KEYS, less those its objective does not read."""
    return {k: train[k] for k in RECIPE_KEYS if ONLY_UNDER.get(k, train["objective"]) == train["objective"]}
