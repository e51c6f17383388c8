"""The functional canary's task: its data source paired with its scorers.

As an inspect_ai ``Task`` pairs a dataset with a scorer, ``FUNCTIONAL`` pairs the canary's
examples (``source.py``: code and tool-call answers to the synthetic needles, or HumanEval) with
the metrics their ``meta["metric"]`` names (``eval/functional.py``: pass@1 in the sandbox and
tool-call checks, dispatched by ``eval.metrics`` like any metric) and with the rows the score
phase adds for them (``score.py``: ``functional_scores``). The pipeline asks the task when the
config names its dataset (``dataset.name: functional``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Callable

from kv_transition.canary.score import score_functional
from kv_transition.canary.source import load_functional
from kv_transition.data.normalize import Example
from kv_transition.eval.functional import FUNCTIONAL_METRICS
from kv_transition.settings import DatasetConfig


@dataclass(frozen=True)
class Task:
    dataset: str  # the dataset.name that selects the task
    # (dataset config, number of bins, token counter) -> the candidates prepare bins
    source: Callable[[DatasetConfig, int, Callable[[str], int]], list[Example]]
    metrics: tuple[str, ...]  # the eval.metrics scorers its examples name
    score: Callable[[sqlite3.Connection, str], int]  # the score phase's extra rows; their count


FUNCTIONAL = Task("functional", load_functional, FUNCTIONAL_METRICS, score_functional)
