"""Temporal structure of a novelty series: spikes, burstiness, memory, tails. Pure functions.

All take a 1-D series ``y``; NaN marks positions without a value (no full trailing window
yet) and is ignored by the moments and never a spike.

- spikes: positions with ``y > mean + k·std`` (population std over the finite values); runs of
  such positions at most ``merge`` apart are one event, placed at the run's maximum. A
  constant series has ``std = 0`` and no spikes.
- burstiness ``B = (σ - μ) / (σ + μ)`` of the inter-spike intervals (Goh & Barabási): −1 for
  perfectly periodic spikes, ≈ 0 for a Poisson process, → 1 for bursts. Needs ≥ 2 intervals.
- autocorrelation ``r_k = Σ (y_t - ȳ)(y_{t+k} - ȳ) / Σ (y_t - ȳ)^2`` for ``k = 0..max_lag`` over
  the finite values; under white noise ``|r_k| < 1.96/√n`` 95% of the time.
- excess kurtosis ``m4/m2^2 - 3`` and skew ``m3/m2^1.5`` (population moments): a Gaussian has
  both 0; heavy right tails give both > 0.
- uniformity: Kolmogorov–Smirnov test of spike positions (mid-position / length) against
  U(0, 1); a small p says spikes are not spread evenly. Needs ≥ 3 spikes.
- transition enrichment: spikes within ``radius`` positions of a semantic transition, against
  the number expected if spikes fell anywhere (spikes × fraction of positions that near a
  transition), with a one-sided binomial p-value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats


def _finite(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return y[np.isfinite(y)]


def _flat(vals: np.ndarray) -> bool:
    """Constant up to rounding: the mean of identical floats is not always exactly them."""
    return not len(vals) or float(np.ptp(vals)) <= 1e-12 * max(1.0, float(np.abs(vals).max()))


def spike_threshold(y: np.ndarray, k: float = 2.0) -> float:
    """mean + k·std; NaN for an empty or constant series (which has no spikes)."""
    vals = _finite(y)
    if _flat(vals):
        return float("nan")
    return float(vals.mean() + k * vals.std())


def detect_spikes(y: np.ndarray, k: float = 2.0, merge: int = 3) -> np.ndarray:
    """Indices of spike events (see the module docstring)."""
    y = np.asarray(y, dtype=np.float64)
    thr = spike_threshold(y, k)
    if not np.isfinite(thr):
        return np.empty(0, dtype=int)
    above = np.flatnonzero(np.isfinite(y) & (y > thr))
    if not len(above):
        return above
    breaks = np.flatnonzero(np.diff(above) > merge) + 1
    return np.array([run[np.argmax(y[run])] for run in np.split(above, breaks)], dtype=int)


def burstiness(intervals: np.ndarray) -> float:
    intervals = np.asarray(intervals, dtype=np.float64)
    if len(intervals) < 2:
        return float("nan")
    mu, sigma = intervals.mean(), intervals.std()
    return float((sigma - mu) / (sigma + mu)) if sigma + mu > 0 else float("nan")


def autocorrelation(y: np.ndarray, max_lag: int = 50) -> np.ndarray:
    vals = _finite(y)
    n = len(vals)
    if n < 2:
        return np.full(1, np.nan)
    lags = min(max_lag, n - 1)
    if _flat(vals):
        return np.full(lags + 1, np.nan)
    centred = vals - vals.mean()
    denom = (centred ** 2).sum()
    return np.array([(centred[: n - k] * centred[k:]).sum() / denom for k in range(lags + 1)])


def acf_band(n: int) -> float:
    """The 95% white-noise band of an autocorrelation estimate from ``n`` values."""
    return 1.96 / np.sqrt(n) if n > 0 else float("nan")


def tail_shape(y: np.ndarray) -> tuple[float, float]:
    """(excess kurtosis, skew); NaN for a constant or empty series."""
    vals = _finite(y)
    if len(vals) < 2 or _flat(vals):
        return float("nan"), float("nan")
    c = vals - vals.mean()
    m2 = (c ** 2).mean()
    return float((c ** 4).mean() / m2 ** 2 - 3.0), float((c ** 3).mean() / m2 ** 1.5)


def spike_uniformity_p(spikes: np.ndarray, length: int) -> float:
    if len(spikes) < 3 or length < 1:
        return float("nan")
    return float(stats.kstest((np.asarray(spikes) + 0.5) / length, "uniform").pvalue)


def near_transitions(transitions: np.ndarray, radius: int) -> np.ndarray:
    """Boolean mask of positions within ``radius`` of a transition (either side)."""
    transitions = np.asarray(transitions, dtype=bool)
    near = transitions.copy()
    for shift in range(1, radius + 1):
        near[shift:] |= transitions[:-shift]
        near[:-shift] |= transitions[shift:]
    return near


@dataclass
class Enrichment:
    n_transitions: int
    hits: int | None = None  # spikes near a transition
    expected: float | None = None
    p_value: float | None = None


def transition_enrichment(spikes: np.ndarray, transitions: np.ndarray,
                          radius: int = 2) -> Enrichment:
    transitions = np.asarray(transitions, dtype=bool)
    result = Enrichment(int(transitions.sum()))
    if not result.n_transitions or not len(spikes):
        return result
    near = near_transitions(transitions, radius)
    coverage = float(near.mean())
    result.hits = int(near[np.asarray(spikes)].sum())
    result.expected = len(spikes) * coverage
    if 0 < coverage < 1:
        result.p_value = float(stats.binomtest(result.hits, len(spikes), coverage,
                                               alternative="greater").pvalue)
    return result


@dataclass
class SeriesStats:
    """Everything the report and plots need from one series over one segment."""

    n: int
    mean: float
    std: float
    kurtosis: float
    skew: float
    spikes: list[int]
    burstiness: float
    acf: list[float]
    acf_band: float
    uniformity_p: float
    enrichment: Enrichment
    extra: dict = field(default_factory=dict)

    @property
    def acf_lag1(self) -> float:
        return self.acf[1] if len(self.acf) > 1 else float("nan")


def summarize(y: np.ndarray, transitions: np.ndarray, k: float = 2.0, merge: int = 3,
              max_lag: int = 50, radius: int = 2) -> SeriesStats:
    """The temporal statistics of ``y`` (one segment; ``transitions`` aligned with it)."""
    y = np.asarray(y, dtype=np.float64)
    vals = _finite(y)
    spikes = detect_spikes(y, k, merge)
    kurt, skew = tail_shape(y)
    return SeriesStats(
        n=len(vals), mean=float(vals.mean()) if len(vals) else float("nan"),
        std=float(vals.std()) if len(vals) else float("nan"), kurtosis=kurt, skew=skew,
        spikes=spikes.tolist(), burstiness=burstiness(np.diff(spikes)),
        acf=autocorrelation(y, max_lag).tolist(), acf_band=acf_band(len(vals)),
        uniformity_p=spike_uniformity_p(spikes, len(y)),
        enrichment=transition_enrichment(spikes, transitions, radius))
