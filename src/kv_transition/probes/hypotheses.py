"""Which novelty hypotheses the data supports, weakens or cannot decide, with the numbers.

The unit of evidence is one (prompt, layer) series of the primary metric over a layer's
selected heads concatenated: heads of one layer are strongly correlated, so counting them as
separate series would overstate the evidence. Each verdict is one of ``supported``,
``weakened`` or ``inconclusive`` (too little data to say).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import median
from typing import Any

from scipy import stats

from kv_transition.probes.db import ALL_HEADS

Row = dict[str, Any]
MIN_POSITIONS = 20  # below this, moments and autocorrelations are too noisy to judge
MIN_SPIKES_FOR_TRANSITIONS = 5
ALPHA = 0.05


@dataclass
class Verdict:
    hypothesis: str
    verdict: str
    evidence: str


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def units(stats_rows: list[Row], metric: str) -> list[Row]:
    return [r for r in stats_rows if r["metric"] == metric and r["head"] == ALL_HEADS
            and r["layer"] >= 0]


def heavy_tails(rows: list[Row]) -> Verdict:
    name = "Heavy tails (excess kurtosis > 0, positive skew)"
    usable = [r for r in rows if r["n"] >= MIN_POSITIONS]
    kurt, skew = _finite(r["kurtosis"] for r in usable), _finite(r["skew"] for r in usable)
    if not kurt or not skew:
        return Verdict(name, "inconclusive", f"no series has {MIN_POSITIONS}+ positions with "
                       "a non-constant value")
    mk, ms = median(kurt), median(skew)
    positive = sum(k > 0 for k in kurt)
    text = (f"median excess kurtosis {mk:.2f} (> 0 in {positive}/{len(kurt)} series), median "
            f"skew {ms:.2f}; a Gaussian has 0 and 0")
    return Verdict(name, "supported" if mk > 0 and ms > 0 else "weakened", text)


def bursty(rows: list[Row]) -> Verdict:
    name = "Bursty spikes (burstiness > 0)"
    values = _finite(r["burstiness"] for r in rows)
    if not values:
        return Verdict(name, "inconclusive", "no series has the 3+ spikes burstiness needs")
    mb = median(values)
    tested = _finite(r["uniformity_p"] for r in rows)
    uneven = sum(p < ALPHA for p in tested)
    text = (f"median burstiness {mb:.2f} over {len(values)} series (−1 periodic, 0 Poisson, "
            f"1 bursty); spike positions non-uniform (KS p < {ALPHA}) in {uneven}/"
            f"{len(tested)} series")
    return Verdict(name, "supported" if mb > 0 else "weakened", text)


def at_transitions(rows: list[Row]) -> Verdict:
    name = "Spikes at semantic transitions"
    with_tr = [r for r in rows if r["n_transitions"] and r["transition_hits"] is not None]
    n_tr = sum(r["n_transitions"] for r in rows)
    if not n_tr:
        return Verdict(name, "inconclusive", "no semantic transition (paragraph break or "
                       "code/prose switch) in the analysed positions")
    spikes = sum(r["n_spikes"] for r in with_tr)
    hits = sum(r["transition_hits"] for r in with_tr)
    expected = sum(r["transition_expected"] or 0.0 for r in with_tr)
    if spikes < MIN_SPIKES_FOR_TRANSITIONS or expected <= 0:
        return Verdict(name, "inconclusive", f"{spikes} spikes in series with transitions; "
                       f"at least {MIN_SPIKES_FOR_TRANSITIONS} are needed")
    p = stats.binomtest(hits, spikes, min(1.0, expected / spikes), alternative="greater").pvalue
    text = (f"{hits} of {spikes} spikes lie near a transition vs {expected:.1f} expected by "
            f"chance (one-sided binomial p = {p:.3g}; {n_tr} transitions)")
    verdict = "supported" if hits > expected and p < ALPHA else \
        "weakened" if hits <= expected else "inconclusive"
    return Verdict(name, verdict, text)


def autocorrelated(rows: list[Row]) -> Verdict:
    name = "Autocorrelation (structure in time)"
    usable = [r for r in rows if r["n"] >= MIN_POSITIONS and r["acf_lag1"] is not None]
    if not usable:
        return Verdict(name, "inconclusive", f"no series has {MIN_POSITIONS}+ positions")
    acf1 = median(r["acf_lag1"] for r in usable)
    band = median(r["acf_band"] for r in usable)
    above = sum(r["acf_lag1"] > r["acf_band"] for r in usable)
    text = (f"median lag-1 autocorrelation {acf1:.2f} vs white-noise band ±{band:.2f}; above "
            f"the band in {above}/{len(usable)} series")
    return Verdict(name, "supported" if acf1 > band else "weakened", text)


def verdicts(stats_rows: list[Row], metric: str) -> list[Verdict]:
    rows = units(stats_rows, metric)
    return [heavy_tails(rows), bursty(rows), at_transitions(rows), autocorrelated(rows)]


@dataclass
class PolicyLink:
    policy: str
    budget: float
    kept_all: float | None
    kept_high: float | None
    rho: float | None
    n_units: int
    n_significant: int

    @property
    def ratio(self) -> float | None:
        if self.kept_all in (None, 0) or self.kept_high is None:
            return None
        return self.kept_high / self.kept_all


def policy_links(compression_rows: list[Row], metric: str) -> list[PolicyLink]:
    """Per policy and budget, pooled over (prompt, layer) units of ``metric``."""
    groups: dict[tuple[str, float], list[Row]] = defaultdict(list)
    for r in compression_rows:
        if r["metric"] == metric and r["head"] == ALL_HEADS:
            groups[(r["kv_policy"], float(r["kv_budget"]))].append(r)
    out = []
    for (policy, budget), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        out.append(PolicyLink(
            policy, budget, mean(_finite(r["kept_frac_all"] for r in rows)),
            mean(_finite(r["kept_frac_high"] for r in rows)),
            median(_finite(r["spearman_rho"] for r in rows) or [math.nan]),
            len(rows), sum(1 for r in rows if r["spearman_p"] is not None
                           and r["spearman_p"] < ALPHA)))
    return out


def link_words(link: PolicyLink) -> str:
    ratio = link.ratio
    if ratio is None:
        return f"{link.policy} at budget {link.budget:g}: no high-novelty positions to compare."
    how = "more often than" if ratio > 1.05 else "less often than" if ratio < 0.95 else \
        "about as often as"
    rho = "—" if link.rho is None or not math.isfinite(link.rho) else f"{link.rho:+.2f}"
    return (f"{link.policy} at budget {link.budget:g} keeps high-novelty positions {how} "
            f"positions overall ({link.kept_high:.0%} vs {link.kept_all:.0%}, ratio "
            f"{ratio:.2f}); median Spearman ρ between novelty and its score {rho}.")
