"""Find the instability transition zone: length bins where instability rises before accuracy
collapses, with a stated test.

Method ``onesided_boschloo_v3`` (issue 13; replaces ``zscore_v1``, whose z-score triggers and CI
overlap check called a smooth decline a transition up to 61% of the time, and
``onesided_fisher_v2``, whose conditional test found the planted zone 87% of the time at 30
examples per bin):

* collapse floor = COLLAPSE_FRACTION x the best bin accuracy of the full cache (the run itself
  without one). A bin at or below it has collapsed: it is never tested, never the reference
  and never part of the z-scores, so a collapse's flood of flips cannot drown a zone.
* the reference is fixed before looking at instability: the shortest third (at least one) of
  the bins that have not collapsed, pooled. "Rises" means relative to short contexts, so a zone
  starts after them; pooling several bins halves the reference's noise, which at 30 examples
  per bin is what limits power most.
* every other non-collapsed bin is tested on every instability signal it has: failure rate,
  flip rate against the full cache (correctness differs), changed-answer rate (normalized
  answer differs from the full cache's). The test is one-sided (rate above the reference's)
  on the bin's and the pooled reference's counts: a drop in instability is never evidence,
  and the signal tested is the signal that fires. It is Boschloo's exact unconditional test
  (scipy's ``boschloo_exact``): its statistic is Fisher's p, its p-value the largest tail
  probability over the common rate, so it keeps the level exactly and is never less powerful
  than Fisher's test, which conditions on the total count and is conservative at small counts.
  Tables too large for it to be quick use Fisher's (the gap closes as counts grow); each test
  records which it used.
* all tests of all settings of the experiment are one family: Benjamini-Hochberg (default) or
  Holm adjusted p-values, compared with alpha / looks (looks: the analyses refine may make).
* a bin is unstable when any of its signals is significant after adjustment; a zone is a run of
  consecutive unstable bins. Every zone is reported; the first is the run's transition.
* no zone, but some bin's smallest raw p below ``inconclusive_p``: verdict "weak", and those
  bins are what `refine` grows.

z-scores of each signal over the non-collapsed bins are kept in the rationale to describe the
curve; they no longer decide anything.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.stats import boschloo_exact, fisher_exact

from kv_transition.analysis import queries
from kv_transition.analysis.multiplicity import adjust
from kv_transition.db.connect import transaction

METHOD = "onesided_boschloo_v3"
TEST = "boschloo_exact_one_sided"
FISHER = "fisher_exact_one_sided"
# Boschloo evaluates every (n + 1) x (n0 + 1) table over a grid of the common rate: about 0.2 s
# at 30 vs 60 examples, 1 s at 50,000 count pairs, 40 s at 500 vs 1000. Above it, Fisher's.
BOSCHLOO_MAX_TABLES = 50_000
COLLAPSE_FRACTION = 0.5
ALPHA = 0.05
INCONCLUSIVE_P = 0.1
# signal -> (rate column, denominator column) in bin_stats
SIGNALS = {"fail": ("fail_rate", "n"), "flip": ("flip_rate", "n_paired"),
           "changed": ("changed_rate", "n_paired")}

Row = dict[str, Any]


@dataclass
class Policy:
    """How verdicts are decided: level, multiplicity method, and the planned number of looks."""

    alpha: float = ALPHA
    multiplicity: str = "bh"
    inconclusive_p: float = INCONCLUSIVE_P
    looks: int = 1

    @property
    def level(self) -> float:
        # Bonferroni over looks: refine may analyse up to `looks` times; each look spends
        # alpha / looks, so the chance of any false zone over all looks stays below alpha
        return self.alpha / self.looks


def planned_looks(n_per_bin: int, max_n_per_bin: int | None) -> int:
    """Analyses refine may make: the first, then one per doubling of n_per_bin up to the max
    (refine never runs more rounds than this, so alpha / looks per look bounds the total)."""
    looks, n = 1, n_per_bin
    while max_n_per_bin is not None and n < max_n_per_bin:
        n = min(2 * n, max_n_per_bin)
        looks += 1
    return looks


def bin_span(start: int, end: int) -> str:
    return f"bin {start}" if start == end else f"bins {start}–{end}"


def _json_num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def zscores(values: np.ndarray) -> np.ndarray:
    """z across bins; a constant series has no deviation (0), a missing value stays NaN."""
    z = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    spread = values[finite].std() if finite.sum() >= 2 else 0.0
    z[finite] = 0.0 if spread == 0 else (values[finite] - values[finite].mean()) / spread
    return z


def collapse_floor(stats: list[Row], baseline_stats: list[Row] | None) -> float:
    ref = baseline_stats or stats
    best = max((s["acc_mean"] for s in ref if s["acc_mean"] is not None), default=0.0)
    return COLLAPSE_FRACTION * best


def _count(stat: Row, signal: str) -> tuple[int, int] | None:
    rate_key, n_key = SIGNALS[signal]
    rate, n = stat.get(rate_key), stat.get(n_key)
    if rate is None or not n:
        return None
    return int(round(rate * n)), int(n)


@lru_cache(maxsize=65536)
def exact_greater_p(k: int, n: int, k0: int, n0: int) -> tuple[float, str]:
    """One-sided exact p that k/n comes from a higher rate than k0/n0, and the test's name
    (cached: the same counts recur across settings and in the power suite)."""
    if (n + 1) * (n0 + 1) > BOSCHLOO_MAX_TABLES:
        return float(fisher_exact([[k, n - k], [k0, n0 - k0]], alternative="greater")[1]), FISHER
    # scipy's layout: one column per group, successes in the first row
    return float(boschloo_exact([[k, k0], [n - k, n0 - k0]], alternative="greater").pvalue), TEST


def _pooled(refs: list[Row], signal: str) -> tuple[int, int] | None:
    counts = [_count(r, signal) for r in refs]
    if any(c is None for c in counts):
        return None
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _exact_greater(bin_: Row, refs: list[Row], signal: str) -> Row | None:
    """One-sided exact test: is the bin's rate of ``signal`` above the pooled reference's?"""
    counts, ref_counts = _count(bin_, signal), _pooled(refs, signal)
    if counts is None or ref_counts is None:
        return None
    (k, n), (k0, n0) = counts, ref_counts
    p, test = exact_greater_p(k, n, k0, n0)
    return {"bin_idx": bin_["bin_idx"], "signal": signal, "test": test, "count": k, "n": n,
            "ref_count": k0, "ref_n": n0, "statistic": _json_num(k / n - k0 / n0), "p": p}


def _bin_table(stats: list[Row], collapsed: list[bool]) -> list[Row]:
    """Descriptive per-bin rows; z-scores use the non-collapsed bins only."""
    live = [i for i, c in enumerate(collapsed) if not c]
    z: dict[str, dict[int, float | None]] = {}
    for signal, (key, _) in SIGNALS.items():
        values = np.array([np.nan if stats[i].get(key) is None else stats[i][key] for i in live])
        z[signal] = dict(zip(live, (_json_num(v) for v in zscores(values))))
    return [{"bin_idx": s["bin_idx"], "n": s["n"], "acc_mean": _json_num(s["acc_mean"]),
             "collapsed": collapsed[i], **{f"z_{k}": z[k].get(i) for k in SIGNALS}}
            for i, s in enumerate(stats)]


def plan_tests(stats_for_run: list[Row], baseline_stats: list[Row] | None) -> Row:
    """Everything decided before any p-value is seen: floor, reference, the tests."""
    stats = sorted(stats_for_run, key=lambda s: s["bin_idx"])
    floor = collapse_floor(stats, baseline_stats)
    # a model that is never right (floor 0) has no accuracy to lose: nothing has collapsed
    collapsed = [s["acc_mean"] is None or (floor > 0 and s["acc_mean"] <= floor)
                 for s in stats]
    live = [s for s, c in zip(stats, collapsed) if not c]
    refs = live[:math.ceil(len(live) / 3)]
    tests = []
    for s in live[len(refs):]:
        tests += [t for sig in SIGNALS if (t := _exact_greater(s, refs, sig)) is not None]
    return {"stats": stats, "floor": floor, "collapsed": collapsed, "tests": tests,
            "reference_bin": refs[0]["bin_idx"] if refs else None,
            "reference_bins": [r["bin_idx"] for r in refs],
            "collapse_bin": next((s["bin_idx"] for s, c in zip(stats, collapsed) if c), None)}


def _zones(plan: Row, level: float) -> list[Row]:
    """Runs of consecutive bins with a significant signal (adjusted p below the level)."""
    hits: dict[int, list[Row]] = defaultdict(list)
    for t in plan["tests"]:
        if t["p_adjusted"] < level:
            hits[t["bin_idx"]].append(t)
    zones, current = [], None
    for s in plan["stats"]:
        if s["bin_idx"] in hits:
            current = current or {"bins": [], "tests": []}
            current["bins"].append(s["bin_idx"])
            current["tests"] += hits[s["bin_idx"]]
        elif current:
            zones.append(current)
            current = None
    if current:
        zones.append(current)
    return [_zone_summary(z, plan["reference_bins"]) for z in zones]


def reference_words(bins: list[int]) -> str:
    return bin_span(bins[0], bins[-1]) if bins == list(range(bins[0], bins[-1] + 1)) else \
        "bins " + ", ".join(map(str, bins))


def _zone_summary(zone: Row, reference_bins: list[int]) -> Row:
    best = min(zone["tests"], key=lambda t: (t["p_adjusted"], t["p"]))
    return {"start": zone["bins"][0], "end": zone["bins"][-1], "test": best["test"],
            "signals": sorted({t["signal"] for t in zone["tests"]}),
            "signal": best["signal"], "statistic": best["statistic"], "p_value": best["p"],
            "p_adjusted": best["p_adjusted"], "reference_bin": reference_bins[0],
            "reference_bins": reference_bins,
            "tests": [_rounded(t) for t in zone["tests"]]}


def _rounded(test: Row) -> Row:
    return {k: _json_num(v) if isinstance(v, float) else v for k, v in test.items()}


def inconclusive_bins(plan: Row, policy: Policy) -> list[int]:
    """Bins with suggestive evidence (smallest raw p below inconclusive_p) but no significant
    signal: the bins more examples could decide."""
    significant = {t["bin_idx"] for t in plan["tests"] if t["p_adjusted"] < policy.level}
    return sorted({t["bin_idx"] for t in plan["tests"]
                   if t["p"] < policy.inconclusive_p and t["bin_idx"] not in significant})


def _no_zone(plan: Row, policy: Policy) -> tuple[str, str]:
    if len(plan["stats"]) < 2:
        return "too_few_bins", "one length bin: nothing to compare across length"
    if plan["reference_bin"] is None:
        return "no_reference", "every bin has collapsed: no stable bin to compare against"
    if not plan["tests"]:
        return "no_tests", "no instability signal was measured outside the reference bin"
    weak = inconclusive_bins(plan, policy)
    if weak:
        return "weak", (f"bin(s) {', '.join(map(str, weak))} suggest more instability than "
                        f"{reference_words(plan['reference_bins'])} (raw p < "
                        f"{policy.inconclusive_p:g}), but nothing is significant after "
                        f"{policy.multiplicity.upper()} at {policy.level:.3g}")
    return "no_instability", (f"no signal is above {reference_words(plan['reference_bins'])} "
                              f"(every raw p >= {policy.inconclusive_p:g})")


def decide(plan: Row, policy: Policy) -> tuple[int | None, int | None, Row]:
    """(start_bin, end_bin, rationale) once the plan's tests carry p_adjusted."""
    rationale: Row = {
        "method": METHOD, "test": TEST, "alpha": policy.alpha, "looks": policy.looks,
        "level": _json_num(policy.level), "multiplicity": policy.multiplicity,
        "collapse_fraction": COLLAPSE_FRACTION, "collapse_floor": _json_num(plan["floor"]),
        "collapse_bin": plan["collapse_bin"], "reference_bin": plan["reference_bin"],
        "reference_bins": plan.get("reference_bins", []),
        "bins": _bin_table(plan["stats"], plan["collapsed"]),
        "tests": [_rounded(t) for t in plan["tests"]],
        "inconclusive_bins": inconclusive_bins(plan, policy) if plan["tests"] else [],
    }
    if not plan["stats"]:
        return None, None, {**rationale, "verdict": "no_data", "why": "no bin statistics"}
    zones = _zones(plan, policy.level)
    if not zones:
        verdict, why = _no_zone(plan, policy)
        return None, None, {**rationale, "verdict": verdict, "why": why, "zones": []}
    first = zones[0]
    why = (f"{', '.join(first['signals'])} above {reference_words(first['reference_bins'])} "
           f"({first['test'].replace('_', ' ')}, {policy.multiplicity.upper()}-adjusted p = "
           f"{first['p_adjusted']:.2g} < {policy.level:.3g}) while accuracy is above the "
           f"collapse floor ({plan['floor']:.2f})")
    return first["start"], first["end"], {**rationale, "verdict": "transition", "why": why,
                                          "zones": zones, **{k: first[k] for k in (
                                              "test", "signal", "statistic", "p_value",
                                              "p_adjusted")}}


def adjust_family(plans: list[Row], method: str) -> None:
    """Adjust every test of every plan as one family (in place)."""
    tests = [t for plan in plans for t in plan["tests"]]
    for t, p in zip(tests, adjust([t["p"] for t in tests], method)):
        t["p_adjusted"] = p


def detect_transition(stats_for_run: list[Row], baseline_stats: list[Row] | None,
                      policy: Policy | None = None) -> tuple[int | None, int | None, Row]:
    """One run on its own: its tests are the whole family."""
    policy = policy or Policy()
    plan = plan_tests(stats_for_run, baseline_stats)
    adjust_family([plan], policy.multiplicity)
    return decide(plan, policy)


def _baseline_rationale() -> Row:
    return {"method": METHOD, "verdict": "baseline", "zones": [], "tests": [],
            "why": "the full cache is the reference every compressed run is compared with"}


def detect_group(by_run: dict[int, list[Row]], runs: list[Row],
                 policy: Policy) -> list[Row]:
    """Verdicts for every run; the tests of all compressed runs form one family."""
    baselines = queries.baseline_by_dataset(runs)
    plans = {}
    for run in runs:
        base = baselines.get(run["dataset_id"])
        if base is not None and base["run_id"] == run["run_id"]:
            continue
        base_stats = by_run.get(base["run_id"]) if base else None
        plans[run["run_id"]] = plan_tests(by_run.get(run["run_id"], []), base_stats)
    adjust_family(list(plans.values()), policy.multiplicity)
    results = []
    for run in runs:
        if run["run_id"] not in plans:
            results.append({"run_id": run["run_id"], "transition_bin_start": None,
                            "transition_bin_end": None, "rationale": _baseline_rationale()})
            continue
        start, end, rationale = decide(plans[run["run_id"]], policy)
        results.append({"run_id": run["run_id"], "transition_bin_start": start,
                        "transition_bin_end": end, "rationale": rationale})
    return results


SUMMARY_COLUMNS = ("run_id", "transition_bin_start", "transition_bin_end", "rationale_json",
                   "verdict", "test", "statistic", "p_value", "p_adjusted", "reference_bin")


def _summary_row(result: Row) -> tuple:
    r = result["rationale"]
    return (result["run_id"], result["transition_bin_start"], result["transition_bin_end"],
            json.dumps(r, allow_nan=False), r["verdict"], r.get("test"), r.get("statistic"),
            r.get("p_value"), r.get("p_adjusted"), r.get("reference_bin"))


def write_transitions(conn: sqlite3.Connection, exp_group_id: str, cfg,
                      looks: int = 1) -> list[Row]:
    """Detect the zones of every run from stored bin_stats; rerunning replaces, never adds."""
    runs = queries.runs_of_group(conn, exp_group_id)
    by_run: dict[int, list[Row]] = defaultdict(list)
    for row in queries.bin_stats_rows(conn, exp_group_id):
        by_run[row["run_id"]].append(row)
    results = detect_group(by_run, runs, policy_from(cfg, looks))
    marks = ",".join("?" * len(SUMMARY_COLUMNS))
    with transaction(conn):
        conn.executemany("DELETE FROM transition_summary WHERE run_id = ?",
                         [(r["run_id"],) for r in runs])
        conn.executemany(f"INSERT INTO transition_summary ({','.join(SUMMARY_COLUMNS)}) "
                         f"VALUES ({marks})", [_summary_row(r) for r in results])
    return results


def policy_from(cfg, looks: int = 1) -> Policy:
    """The detector's policy from an AnalysisConfig (fields missing on old configs default)."""
    return Policy(alpha=getattr(cfg, "alpha", ALPHA),
                  multiplicity=getattr(cfg, "multiplicity", "bh"),
                  inconclusive_p=getattr(cfg, "inconclusive_p", INCONCLUSIVE_P), looks=looks)


def growth_plan(rationales: list[Row], n_by_bin: dict[int, int], max_n: int) -> dict[int, int]:
    """Refine's next step: bin -> new size. Inconclusive bins double (up to max_n), and so does
    the reference bin they were compared with: a one-sided test of a grown bin against a
    reference of the old size gains little, the reference's noise dominating."""
    grow: set[int] = set()
    for r in rationales:
        weak = r.get("inconclusive_bins") or []
        if weak:
            grow.update(weak)
            grow.update(r.get("reference_bins") or [r["reference_bin"]])
    return {b: min(2 * n_by_bin[b], max_n) for b in sorted(grow)
            if b in n_by_bin and n_by_bin[b] < max_n}
