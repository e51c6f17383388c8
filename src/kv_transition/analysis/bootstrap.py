"""Percentile bootstrap confidence intervals for per-bin means and paired differences.

Bins hold tens of examples, so normal-theory intervals on 0/1 accuracies are poor; the
percentile bootstrap needs no distributional assumption and is cheap at this size.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Resampling draws n_boot x n indices; chunk so a large bin never allocates more than this.
_MAX_DRAWS_PER_CHUNK = 4_000_000

Seed = int | Sequence[int]


def _bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    rows_per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // x.size)
    means = []
    for start in range(0, n_boot, rows_per_chunk):
        rows = min(rows_per_chunk, n_boot - start)
        idx = rng.integers(0, x.size, size=(rows, x.size))
        means.append(x[idx].mean(axis=1))
    return np.concatenate(means)


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, ci: float = 0.95, seed: Seed = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: (low, high).

    n = 0 gives (nan, nan): there is nothing to estimate. n = 1 gives (v, v): resampling one
    value can only return it, so the interval is degenerate rather than undefined.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = _bootstrap_means(x, n_boot, rng)
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_diff_ci(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, ci: float = 0.95, seed: Seed = 0
) -> tuple[float, float]:
    """Bootstrap CI of mean(a - b), resampling (a_i, b_i) pairs together.

    Resampling pairs is the same as resampling the per-pair differences; it keeps the
    per-example correlation between a compressed run and the full cache, which is what makes
    a paired comparison far tighter than comparing two independent means.
    """
    a_arr = np.asarray(a, dtype=float)
    b_arr = np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples differ in length: {a_arr.size} vs {b_arr.size}")
    return bootstrap_ci(a_arr - b_arr, n_boot=n_boot, ci=ci, seed=seed)
