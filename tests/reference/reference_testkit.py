"""Helpers shared by the reference-model tests (a module name no other test folder uses)."""

from __future__ import annotations

import json
from pathlib import Path

from kv_transition.reference.dataset import DataPlan
from kv_transition.reference.train import LOG, TrainConfig

SMOKE_STEPS = 16


def smoke_config(out: Path, seed: int = 0, steps: int = SMOKE_STEPS, **kwargs) -> TrainConfig:
    """A tiny model on short contexts: a training step takes a fraction of a second on CPU."""
    plan = DataPlan(seed=seed, steps=steps, tokens_per_step=512, min_len=96, max_len=128)
    options = {"lr": 3e-3, "warmup": 4, "device": "cpu", "log_every": 1,
               "checkpoint_every": 1000, **kwargs}
    return TrainConfig(out=str(out), size="smoke", data=plan, **options)


def train_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG).read_text().splitlines()]
