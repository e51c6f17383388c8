"""Power and calibration on planted scenarios, through the code the pipeline runs.

Each replicate draws per-request outcomes for a full-cache run and one compressed run over six
length bins, then goes through ``aggregate.run_stats`` (intervals, paired tests) and
``transition.detect_group`` (tests, multiplicity, verdict), exactly as ``analyze`` does from
the database. benchmarks/detector_power.py prints the tables; the report quotes
``zone_detection_rate`` so a reader knows whether "no zone" means none or too few examples.

The generative model, per request in bin b: the full cache answers right with probability
``full``. The compressed run fails (empty answer, a failures row) with probability ``fail``;
otherwise its answer diverges from the full cache's with probability ``diverge`` (and is then
right with probability ``right_if_diverged``), else it is the full cache's answer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable

import numpy as np
from scipy.stats import beta, binom

from kv_transition.analysis.aggregate import run_stats
from kv_transition.analysis.intervals import wilson
from kv_transition.analysis.transition import Policy, detect_group, growth_plan
from kv_transition.settings import AnalysisConfig

Row = dict[str, Any]
N_BINS = 6
FULL_RUN = {"run_id": 1, "dataset_id": "sim", "kv_policy": "full", "kv_budget": 1.0}
COMP_RUN = {"run_id": 2, "dataset_id": "sim", "kv_policy": "sim", "kv_budget": 0.5}
# intervals by formula need no resampling; the bootstrap paths are not hit by 0/1 scores
CFG = AnalysisConfig(n_bootstrap=100)


@dataclass(frozen=True)
class BinParams:
    full: float = 0.9
    fail: float = 0.02
    diverge: float = 0.05
    right_if_diverged: float = 0.5


STABLE = BinParams()
COLLAPSED = BinParams(fail=0.05, diverge=0.9, right_if_diverged=0.05)


@dataclass(frozen=True)
class Scenario:
    name: str
    bins: tuple[BinParams, ...]
    zone: tuple[int, int] | None  # the planted zone; None: any strong zone is a false alarm
    note: str


def _scenarios() -> dict[str, Scenario]:
    hi = replace(STABLE, full=0.95)
    zone = BinParams(full=0.95, fail=0.20, diverge=0.35, right_if_diverged=0.9)
    decline = tuple(replace(STABLE, full=0.9 - 0.1 * b) for b in range(N_BINS))
    return {s.name: s for s in (
        Scenario("flat", (STABLE,) * N_BINS, None, "nothing changes with length"),
        Scenario("zone_then_collapse", (hi, hi, zone, zone, COLLAPSED, COLLAPSED), (2, 3),
                 "bins 2-3: fail 0.20 and 35% of the other answers change, accuracy ~0.75; "
                 "collapse after"),
        Scenario("smooth_decline", decline, None,
                 "accuracy of both caches falls 0.9 -> 0.4; instability constant"),
        Scenario("collapse_no_warning", (STABLE,) * 4 + (COLLAPSED,) * 2, None,
                 "flat, then accuracy collapses at bin 4"),
        Scenario("fail_only_zone", (STABLE,) * 3 + (replace(STABLE, fail=0.25),) * 2
                 + (STABLE,), (3, 4), "bins 3-4: only failures rise, 0.02 to 0.25"),
        Scenario("compression_decline",
                 tuple(replace(STABLE, diverge=0.05 + 0.08 * b, right_if_diverged=0.0)
                       for b in range(N_BINS)), None,
                 "compressed answers drift away one-way (changed 0.05 -> 0.45): every change "
                 "is a loss; flips do rise, so a zone here is a flip rise, not noise"),
    )}


SCENARIOS = _scenarios()
NULL_SCENARIOS = ("flat", "smooth_decline", "collapse_no_warning")
PLANTED = tuple(name for name, s in SCENARIOS.items() if s.zone is not None)


def _draw_bin(p: BinParams, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    full_right = rng.random(n) < p.full
    failed = rng.random(n) < p.fail
    diverged = ~failed & (rng.random(n) < p.diverge)
    right_if_div = rng.random(n) < p.right_if_diverged
    comp_right = np.where(diverged, right_if_div, full_right) & ~failed
    return full_right, failed, diverged, comp_right


def _rows(run_id: int, bin_idx: int, entry0: int, right, preds, failed) -> list[Row]:
    return [{"run_id": run_id, "entry_id": entry0 + i, "bin_idx": bin_idx,
             "acc": float(r), "pred_norm": pr, "failed": int(f), "latency_s": None,
             "peak_mem_mb": None, "kv_bytes": None}
            for i, (r, pr, f) in enumerate(zip(right.tolist(), preds.tolist(),
                                               failed.tolist()))]


def draw(scenario: Scenario, n: int, rng: np.random.Generator) -> dict[int, dict[int, list[Row]]]:
    """Per run, per bin: n simulated request rows (prefixes of a larger draw are draws too)."""
    full: dict[int, list[Row]] = {}
    comp: dict[int, list[Row]] = {}
    for b, params in enumerate(scenario.bins):
        full_right, failed, diverged, comp_right = _draw_bin(params, n, rng)
        full_pred = np.where(full_right, "gold", "wrong")
        # a diverged answer differs from the full cache's, right or wrong (a right one where
        # the full cache was right too is another accepted form of the gold answer); were it
        # the full cache's own string, "changed" would miss it and rise as accuracy falls,
        # so a smooth decline would carry a real changed-rate rise
        right_pred = np.where(full_right, "gold alias", "gold")
        comp_pred = np.where(failed, "", np.where(
            diverged, np.where(comp_right, right_pred, "other"), full_pred))
        entry0 = b * 100_000
        full[b] = _rows(1, b, entry0, full_right, full_pred, np.zeros(n, bool))
        comp[b] = _rows(2, b, entry0, comp_right, comp_pred, failed)
    return {1: full, 2: comp}


def _prefix(data: dict[int, dict[int, list[Row]]], n_by_bin: dict[int, int]) -> dict:
    return {run: {b: rows[:n_by_bin[b]] for b, rows in bins.items()}
            for run, bins in data.items()}


def analyse(data: dict[int, dict[int, list[Row]]], policy: Policy) -> Row:
    """bin_stats for both runs, then the compressed run's verdict, as `analyze` makes them."""
    full_by_entry = {r["entry_id"]: r for rows in data[1].values() for r in rows}
    by_run = {1: run_stats(FULL_RUN, data[1], FULL_RUN, full_by_entry, CFG),
              2: run_stats(COMP_RUN, data[2], FULL_RUN, full_by_entry, CFG)}
    result = detect_group(by_run, [FULL_RUN, COMP_RUN], policy)[1]
    return {"rationale": result["rationale"], "stats": by_run}


def run_with_refinement(scenario: Scenario, n0: int, max_n: int, rng: np.random.Generator,
                        policy: Policy) -> Row:
    """Refine's loop: analyse; grow the inconclusive bins (and their reference) by doubling;
    stop when decisive, at max_n, or after the planned looks. Returns the last verdict."""
    data = draw(scenario, max_n, rng)
    n_by_bin = {b: n0 for b in range(N_BINS)}
    for _ in range(policy.looks):
        out = analyse(_prefix(data, n_by_bin), policy)
        grow = growth_plan([out["rationale"]], n_by_bin, max_n)
        if not grow:
            break
        n_by_bin.update(grow)
    return {**out, "n_by_bin": n_by_bin}


def _outcome(rationale: Row, zone: tuple[int, int] | None) -> Row:
    zones = [(z["start"], z["end"]) for z in rationale.get("zones", [])]
    strong = rationale["verdict"] == "transition"
    hit = zone is not None and any(s <= zone[1] and e >= zone[0] for s, e in zones)
    stray = any(zone is None or e < zone[0] or s > zone[1] for s, e in zones)
    return {"strong": strong, "detected": hit, "exact": zone is not None and zone in zones,
            "false_alarm": stray, "weak": rationale["verdict"] == "weak"}


def scenario_rates(scenario: Scenario, n: int, reps: int, seed: int,
                   policy: Policy | None = None, max_n: int | None = None) -> Row:
    """Rates over ``reps`` replicates; with max_n, through the refinement loop."""
    policy = policy or Policy()
    rng = np.random.default_rng([seed, n, sum(map(ord, scenario.name))])
    outcomes = []
    for _ in range(reps):
        if max_n is None:
            rationale = analyse(draw(scenario, n, rng), policy)["rationale"]
        else:
            rationale = run_with_refinement(scenario, n, max_n, rng, policy)["rationale"]
        outcomes.append(_outcome(rationale, scenario.zone))
    rates = {k: float(np.mean([o[k] for o in outcomes])) for k in outcomes[0]}
    return {"scenario": scenario.name, "n": n, "reps": reps, **rates}


def coverage(p: float, n: int, reps: int, seed: int, loss: float = 0.05) -> Row:
    """How often the stored intervals cover the truth: accuracy p at n examples, and the paired
    difference when the compressed run loses ``loss`` one-way from a full cache at p."""
    rng = np.random.default_rng([seed, n, int(p * 1000)])
    scen = Scenario("cov", (BinParams(full=p, fail=0.0, diverge=loss / p,
                                      right_if_diverged=0.0),), None, "")
    acc_hits = delta_hits = 0
    for _ in range(reps):
        data = draw(scen, n, rng)
        full_by_entry = {r["entry_id"]: r for r in data[1][0]}
        full = run_stats(FULL_RUN, data[1], FULL_RUN, full_by_entry, CFG)[0]
        comp = run_stats(COMP_RUN, data[2], FULL_RUN, full_by_entry, CFG)[0]
        acc_hits += full["acc_ci_low"] <= p <= full["acc_ci_high"]
        delta_hits += comp["acc_delta_ci_low"] <= -loss <= comp["acc_delta_ci_high"]
    return {"p": p, "n": n, "reps": reps, "acc": acc_hits / reps, "delta": delta_hits / reps,
            "acc_method": full["acc_ci_method"], "delta_method": comp["acc_delta_ci_method"]}


def _jeffreys(k: int, n: int, ci: float) -> tuple[float, float]:
    tail = (1 - ci) / 2
    return (0.0 if k == 0 else float(beta.ppf(tail, k + 0.5, n - k + 0.5)),
            1.0 if k == n else float(beta.ppf(1 - tail, k + 0.5, n - k + 0.5)))


def exact_coverage(p: float, n: int, ci: float = 0.95, method: str = "wilson",
                   interval: Callable[[int, int], tuple[float, float]] | None = None) -> float:
    """Coverage of the Wilson (the stored one) or Jeffreys interval, or of ``interval(k, n)``,
    at accuracy p and n independent examples, computed exactly: the binomial probability of
    the counts k whose interval contains p."""
    bounds = interval or {"wilson": lambda k, n: wilson(k / n, n, ci),
                          "jeffreys": lambda k, n: _jeffreys(k, n, ci)}[method]
    return float(sum(binom.pmf(k, n, p) for k in range(n + 1)
                     if (b := bounds(k, n))[0] <= p <= b[1]))


def attainable_coverage(p: float, n: int, low: float = 0.93,
                        high: float = 0.97) -> tuple[float, list[float], float]:
    """What any interval rule can cover at (p, n): an interval's coverage is the binomial mass
    of the counts whose interval contains p, a run of consecutive k for any sensible rule.
    Returns (the largest mass below ``low``, the masses within [low, high], the smallest above
    ``high``): an empty middle list means no deterministic interval can meet the band there."""
    pmf = binom.pmf(np.arange(n + 1), n, p)
    cum = np.concatenate([[0.0], np.cumsum(pmf)])
    masses = sorted({round(float(cum[b] - cum[a]), 6) for a in range(n + 1)
                     for b in range(a + 1, n + 2)})
    return (max((m for m in masses if m < low), default=0.0),
            [m for m in masses if low <= m <= high],
            min((m for m in masses if m > high), default=1.0))


@lru_cache(maxsize=64)
def zone_detection_rate(n: int, looks: int = 1, reps: int = 200, seed: int = 0,
                        scenario: str = "zone_then_collapse") -> float:
    """How often a planted zone (``scenario``, one of PLANTED) is found with n examples per bin."""
    rates = scenario_rates(SCENARIOS[scenario], n, reps, seed, Policy(looks=looks))
    return rates["detected"]
