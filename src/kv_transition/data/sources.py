"""Pick the task source the config names and produce candidate examples."""

from __future__ import annotations

import math
from typing import Callable

from kv_transition.data.normalize import Example
from kv_transition.settings import Settings


def load_examples(settings: Settings, count_tokens: Callable[[str], int]) -> list[Example]:
    cfg = settings.dataset
    if cfg.name == "synthetic":
        from kv_transition.data.synthetic import generate_examples

        # enough candidates that every bin can be filled, whatever n_bins is
        n_each = math.ceil(cfg.n_per_bin * settings.binning.n_bins / len(cfg.lengths))
        return [ex for target in cfg.lengths
                for ex in generate_examples(cfg.task, target, n_each, cfg.seed, count_tokens,
                                             families=cfg.tasks)]
    if cfg.name == "functional":
        from kv_transition.data.functional import load_functional

        return load_functional(cfg, settings.binning.n_bins, count_tokens)
    from kv_transition.data.longbench import load_longbench

    return load_longbench(cfg.task, cfg.path)
