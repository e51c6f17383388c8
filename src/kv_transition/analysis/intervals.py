"""Intervals that hold at small n and near 0 and 1, and paired tests against the full cache.

Why not the percentile bootstrap everywhere: on a bin where every example is right it returns
the single point [1, 1], so at p = 0.97, n = 12 it covers the truth about a third of the time.
Instead:

* 0/1 scores (exact match, RULER match, failure flags): the Wilson score interval. Its exact
  binomial coverage is 94-97% for p in {0.5, 0.9, 0.97} at n = 12..100
  (benchmarks/detector_power.py prints it).
* Requests that share a context are not independent (Miller 2024, "Adding Error Bars to
  Evals"): the clustered variance gives a design effect, and Wilson uses n / design effect.
* Bounded continuous scores (F1, ROUGE): a BCa bootstrap that resamples whole clusters (each
  example is its own cluster when none share a context). When it cannot be computed (all
  values equal, fewer than 3 clusters) Wilson on the mean is used: for a variable in [0, 1],
  Var <= mu(1 - mu), so the 0/1 interval is a conservative bound.
* Paired differences from the full cache: for 0/1 scores on independent examples, the exact
  McNemar test and the Bonett-Price adjusted Wald interval; otherwise a sign-flip permutation
  test over clusters and the same cluster BCa bootstrap on the differences.

Every function returns the name of the method it used; it is stored beside the interval.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import stats

Seed = int | Sequence[int]

WILSON = "wilson"
WILSON_CLUSTERED = "wilson_clustered"
WILSON_BOUND = "wilson_bound"
BCA = "bca_bootstrap"
BCA_CLUSTERED = "bca_cluster_bootstrap"
BONETT_PRICE = "bonett_price"
MCNEMAR = "mcnemar_exact"
SIGN_FLIP = "sign_flip_permutation"
MIN_BOOTSTRAP_CLUSTERS = 3  # BCa's jackknife acceleration needs a few clusters to mean anything


@dataclass
class Interval:
    low: float | None
    high: float | None
    method: str | None


@dataclass
class PairedResult:
    delta: float
    low: float
    high: float
    ci_method: str
    p: float
    test: str


@lru_cache(maxsize=16)
def _z(ci: float) -> float:
    return float(stats.norm.ppf(0.5 + ci / 2))


def wilson(mean: float, n: float, ci: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``mean`` out of ``n`` (n may be an effective,
    non-integer sample size). For integer counts it equals scipy's binomtest(...).proportion_ci
    (method='wilson'), which the tests check; the closed form is here for the effective n."""
    z2 = _z(ci) ** 2
    centre = (mean + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(mean * (1 - mean) / n + z2 / (4 * n * n)) * math.sqrt(z2) / (1 + z2 / n)
    # rounding can put an endpoint a hair past the estimate at 0 or 1; an interval must hold it
    return max(0.0, min(mean, centre - half)), min(1.0, max(mean, centre + half))


def is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def _cluster_ids(n: int, clusters: Sequence | None) -> np.ndarray:
    if clusters is None:
        return np.arange(n)
    _, ids = np.unique(np.asarray(clusters), return_inverse=True)
    return ids


def has_clusters(clusters: Sequence | None) -> bool:
    """True when at least two values share a cluster key."""
    return clusters is not None and len(set(clusters)) < len(clusters)


def design_effect(values: np.ndarray, ids: np.ndarray) -> float:
    """Clustered variance of the mean over its iid variance (Miller 2024, eq. for clustered
    SE); never below 1, so clustering can only widen an interval."""
    resid = values - values.mean()
    iid = float(np.sum(resid ** 2))
    if iid == 0:
        return 1.0
    clustered = float(np.sum(np.bincount(ids, weights=resid) ** 2))
    return max(1.0, clustered / iid)


def _cluster_sums(values: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.bincount(ids, weights=values), np.bincount(ids).astype(float)


def _ratio(sums: np.ndarray, sizes: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(sums, axis=axis) / np.sum(sizes, axis=axis)


def _bca(values: np.ndarray, ids: np.ndarray, ci: float, n_boot: int,
         seed: Seed) -> tuple[float, float] | None:
    """BCa interval of the mean resampling whole clusters; None when it is undefined."""
    sums, sizes = _cluster_sums(values, ids)
    if sums.size < MIN_BOOTSTRAP_CLUSTERS or np.all(values == values[0]):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: reported below as None
        res = stats.bootstrap((sums, sizes), _ratio, paired=True, vectorized=True,
                              confidence_level=ci, n_resamples=n_boot, method="BCa",
                              random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return float(low), float(high)


def mean_interval(values: Sequence[float], clusters: Sequence | None = None, ci: float = 0.95,
                  n_boot: int = 2000, seed: Seed = 0) -> Interval:
    """Interval for the mean of per-request scores in [0, 1], clustered by ``clusters``."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Interval(None, None, None)
    clustered = has_clusters(clusters)
    ids = _cluster_ids(x.size, clusters if clustered else None)
    if is_binary(x):
        n_eff = x.size / design_effect(x, ids) if clustered else x.size
        return Interval(*wilson(float(x.mean()), n_eff, ci),
                        WILSON_CLUSTERED if clustered else WILSON)
    bca = _bca(x, ids, ci, n_boot, seed)
    if bca is not None:
        low, high = bca
        return Interval(max(0.0, low), min(1.0, high), BCA_CLUSTERED if clustered else BCA)
    n_eff = x.size / design_effect(x, ids)
    return Interval(*wilson(float(np.clip(x.mean(), 0, 1)), n_eff, ci), WILSON_BOUND)


@lru_cache(maxsize=4096)
def mcnemar_exact(gains: int, losses: int) -> float:
    """Two-sided exact McNemar p: among discordant pairs, is a gain as likely as a loss?"""
    if gains + losses == 0:
        return 1.0
    return float(stats.binomtest(gains, gains + losses, 0.5).pvalue)


def bonett_price(gains: int, losses: int, n: int, ci: float = 0.95) -> tuple[float, float]:
    """Adjusted Wald interval for a paired difference of proportions (Bonett & Price 2012):
    add one to each discordant cell; unlike the bootstrap it is not [0, 0] when no answer
    changed, which is what made the old paired interval cover 46% at n = 12."""
    p_gain, p_loss = (gains + 1) / (n + 2), (losses + 1) / (n + 2)
    diff = p_gain - p_loss
    se = math.sqrt(max(0.0, p_gain + p_loss - diff ** 2) / (n + 2))
    z = _z(ci)
    return max(-1.0, diff - z * se), min(1.0, diff + z * se)


def _sign_flip_p(diffs: np.ndarray, ids: np.ndarray, n_boot: int, seed: Seed) -> float:
    sums = np.bincount(ids, weights=diffs)
    if np.all(sums == 0):
        return 1.0
    res = stats.permutation_test((sums,), lambda x, axis=-1: np.mean(x, axis=axis),
                                 permutation_type="samples", vectorized=True,
                                 n_resamples=n_boot, random_state=np.random.default_rng(seed))
    return float(min(1.0, res.pvalue))


def paired_difference(compressed: Sequence[float], full: Sequence[float],
                      clusters: Sequence | None = None, ci: float = 0.95, n_boot: int = 2000,
                      seed: Seed = 0) -> PairedResult:
    """mean(compressed - full) with its interval and a two-sided paired test."""
    a, b = np.asarray(compressed, dtype=float), np.asarray(full, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    diffs = a - b
    delta = float(diffs.mean())
    if is_binary(a) and is_binary(b) and not has_clusters(clusters):
        gains, losses = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
        low, high = bonett_price(gains, losses, a.size, ci)
        return PairedResult(delta, low, high, BONETT_PRICE, mcnemar_exact(gains, losses),
                            MCNEMAR)
    ids = _cluster_ids(a.size, clusters)
    p = _sign_flip_p(diffs, ids, n_boot, seed)
    # differences live in [-1, 1]: map to [0, 1] so the same bounded interval applies
    inner = _bca((diffs + 1) / 2, ids, ci, n_boot, seed)
    if inner is None:
        inner = wilson((delta + 1) / 2, a.size / design_effect(diffs, ids), ci)
        method = WILSON_BOUND
    else:
        method = BCA_CLUSTERED if has_clusters(clusters) else BCA
    return PairedResult(delta, 2 * inner[0] - 1, 2 * inner[1] - 1, method, p, SIGN_FLIP)
