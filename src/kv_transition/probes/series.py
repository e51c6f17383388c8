"""From captured arrays to keyed novelty series, their statistics and the policy link.

Keys are ``(layer, head, metric)``: ``head`` is a KV-head index, or ``ALL_HEADS`` for the
layer's selected heads concatenated into one vector per position (the unit the hypotheses
verdicts use, so correlated heads are not counted as independent evidence); predictive
metrics have ``layer = head = -1``.
"""

from __future__ import annotations

import numpy as np

from kv_transition.probes.compression import PressOutcome, rank_correlation, retention
from kv_transition.probes.db import ALL_HEADS, NOT_PER_LAYER
from kv_transition.probes.metrics import geometric_metrics, predictive_metrics
from kv_transition.probes.temporal import SeriesStats, summarize
from kv_transition.settings import PROBE_METRICS, ProbesConfig

Key = tuple[int, int, str]


def _geometric(x: np.ndarray, cfg: ProbesConfig) -> dict[str, np.ndarray]:
    return geometric_metrics(x, cfg.window, cfg.mahalanobis_window, cfg.mahalanobis_diag_above,
                             cfg.shrinkage, cfg.subspace_energy)


def layer_series(layer: int, arr: np.ndarray, heads: list[int] | None,
                 cfg: ProbesConfig) -> dict[Key, np.ndarray]:
    """``arr`` is ``[positions, len(heads), dim]``; ``heads`` None for hidden states."""
    out: dict[Key, np.ndarray] = {}
    for j, head in enumerate(heads or []):
        for metric, values in _geometric(arr[:, j, :], cfg).items():
            out[(layer, head, metric)] = values
    whole = arr.reshape(arr.shape[0], -1)
    for metric, values in _geometric(whole, cfg).items():
        out[(layer, ALL_HEADS, metric)] = values
    return out


def predictive_series(logprob: np.ndarray, entropy: np.ndarray) -> dict[Key, np.ndarray]:
    return {(NOT_PER_LAYER, NOT_PER_LAYER, m): v
            for m, v in predictive_metrics(logprob, entropy).items()}


def segment_slice(segment: str, n_prompt: int, n_total: int) -> slice:
    """Positions the statistics cover: generated tokens, the prompt, or both."""
    return {"generated": slice(n_prompt, n_total), "prompt": slice(0, n_prompt),
            "all": slice(0, n_total)}[segment]


def series_stats(series: dict[Key, np.ndarray], transitions: np.ndarray, seg: slice,
                 cfg: ProbesConfig) -> dict[Key, SeriesStats]:
    return {key: summarize(values[seg], transitions[seg], cfg.spike_k, cfg.spike_merge,
                           cfg.max_lag, cfg.transition_radius)
            for key, values in series.items()}


def link_rows(outcome: PressOutcome, series: dict[Key, np.ndarray], layers: list[int],
              heads: list[int] | None, seg: slice, cfg: ProbesConfig) -> list[tuple]:
    """Retention and rank correlation of every geometric series against one press outcome.

    ``ALL_HEADS`` compares with the fraction of the selected heads that kept a position and
    their mean score (all KV heads when the target is the hidden state).
    """
    rows = []
    for layer in layers:
        kept, score = outcome.kept[layer], outcome.scores.get(layer)
        chosen = heads if heads else list(range(kept.shape[0]))
        units = {h: (kept[h].astype(float), None if score is None else score[h]) for h in
                 (heads or [])}
        units[ALL_HEADS] = (kept[chosen].mean(axis=0),
                            None if score is None else score[chosen].mean(axis=0))
        for head, (kept_u, score_u) in units.items():
            for metric in PROBE_METRICS:
                novelty = series[(layer, head, metric)][seg]
                rho, p = (float("nan"), float("nan")) if score_u is None else \
                    rank_correlation(novelty, score_u[seg])
                rows.append((layer, head, metric, outcome.policy, outcome.budget,
                             retention(novelty, kept_u[seg], cfg.high_novelty_quantile), rho, p))
    return rows
