"""Find the instability transition zone: length bins where instability rises before accuracy
collapses.

Method ``zscore_v1`` (the blueprint's detector, kept as the baseline method):

* z-score each signal across the run's bins (population std over bins): the accuracy std,
  the fail rate, the flip rate against the full cache, and the accuracy drop (baseline acc
  minus acc in the same bin; first-bin acc minus acc when there is no baseline).
* collapse floor = COLLAPSE_FRACTION x the best bin accuracy of the reference curve (the
  full-cache baseline when given, else the run itself). A bin has collapsed when its accuracy
  is at or below the floor; the collapse bin is the first such bin.
* a bin is unstable when z_std, z_fail or z_flip exceeds the threshold while its accuracy is
  still above the floor. The zone is the first contiguous run of unstable bins.
* evidence check: z-scores are relative, so some bin always stands out. The zone is kept only
  when it differs from a reference bin (the first bin outside the zone) significantly: an
  accuracy CI that does not overlap, or a fail or flip rate higher by a one-sided Fisher exact
  test at ALPHA. Otherwise the verdict is "weak" and no zone is reported.

The accuracy drop's z-score is reported but does not trigger: a falling mean is collapse, not
the instability that precedes it; for 0/1 metrics a std spike is partly just p(1-p), which is
why flip rate and the evidence check exist.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict
from typing import Any

import numpy as np
from scipy.stats import fisher_exact

from kv_transition.analysis import queries
from kv_transition.db.connect import transaction
from kv_transition.settings import AnalysisConfig

METHOD = "zscore_v1"
COLLAPSE_FRACTION = 0.5
ALPHA = 0.05
TRIGGERS = ("std", "fail", "flip")

Row = dict[str, Any]


def bin_span(start: int, end: int) -> str:
    return f"bin {start}" if start == end else f"bins {start}–{end}"


def _series(stats: list[Row], key: str) -> np.ndarray:
    return np.array([np.nan if s.get(key) is None else float(s[key]) for s in stats])


def _is_constant(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return finite.size == 0 or bool(np.all(finite == finite[0]))


def zscores(values: np.ndarray) -> np.ndarray:
    """z across bins; a constant series has no deviation (0), a missing value stays NaN."""
    z = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    if finite.sum() < 2 or _is_constant(values):
        z[finite] = 0.0
        return z
    spread = values[finite].std()
    z[finite] = (values[finite] - values[finite].mean()) / spread
    return z


def _acc_drop(stats: list[Row], baseline_stats: list[Row] | None) -> np.ndarray:
    acc = _series(stats, "acc_mean")
    if baseline_stats:
        ref = {s["bin_idx"]: s["acc_mean"] for s in baseline_stats}
        full = np.array([np.nan if ref.get(s["bin_idx"]) is None else ref[s["bin_idx"]]
                         for s in stats])
        return full - acc
    return acc[0] - acc


def collapse_floor(stats: list[Row], baseline_stats: list[Row] | None) -> float:
    ref = baseline_stats or stats
    best = max((s["acc_mean"] for s in ref if s["acc_mean"] is not None), default=0.0)
    return COLLAPSE_FRACTION * best


def _signals(stats: list[Row], baseline_stats: list[Row] | None) -> dict[str, np.ndarray]:
    return {
        "std": _series(stats, "acc_std"),
        "fail": _series(stats, "fail_rate"),
        "flip": _series(stats, "flip_rate"),
        "acc_drop": _acc_drop(stats, baseline_stats),
    }


def _json_num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _bin_table(stats: list[Row], z: dict[str, np.ndarray], floor: float,
               threshold: float) -> list[Row]:
    table = []
    for i, s in enumerate(stats):
        collapsed = s["acc_mean"] <= floor
        triggers = [k for k in TRIGGERS if np.isfinite(z[k][i]) and z[k][i] > threshold]
        table.append({
            "bin_idx": s["bin_idx"], "n": s["n"], "acc_mean": _json_num(s["acc_mean"]),
            **{f"z_{k}": _json_num(v[i]) for k, v in z.items()},
            "collapsed": bool(collapsed), "triggers": triggers,
            "unstable": bool(triggers) and not collapsed,
        })
    return table


def _first_zone(table: list[Row]) -> tuple[int, int] | None:
    """Positions (not bin_idx) of the first contiguous run of unstable bins."""
    start = next((i for i, b in enumerate(table) if b["unstable"]), None)
    if start is None:
        return None
    end = start
    while end + 1 < len(table) and table[end + 1]["unstable"]:
        end += 1
    return start, end


def _count(stat: Row, key: str) -> tuple[int, int] | None:
    if stat.get(key) is None or not stat.get("n"):
        return None
    return int(round(stat[key] * stat["n"])), int(stat["n"])


def _higher_p(zone: list[Row], ref: Row, key: str) -> float | None:
    """One-sided Fisher exact p that the zone's pooled rate exceeds the reference bin's."""
    counts = [_count(s, key) for s in zone]
    ref_count = _count(ref, key)
    if ref_count is None or any(c is None for c in counts):
        return None
    k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    table = [[k, n - k], [ref_count[0], ref_count[1] - ref_count[0]]]
    return float(fisher_exact(table, alternative="greater")[1])


def _ci_separated(a: Row, b: Row) -> bool:
    keys = ("acc_ci_low", "acc_ci_high")
    if any(r.get(k) is None for r in (a, b) for k in keys):
        return False
    return a["acc_ci_high"] < b["acc_ci_low"] or a["acc_ci_low"] > b["acc_ci_high"]


def _evidence(stats: list[Row], start: int, end: int, alpha: float) -> Row:
    zone = stats[start:end + 1]
    ref = next((s for i, s in enumerate(stats) if not start <= i <= end), None)
    if ref is None:
        # different signals can fire in every bin at a low threshold: nothing stable to compare
        return {"evidence": "weak", "reference_bin": None, "alpha": alpha}
    p_fail, p_flip = _higher_p(zone, ref, "fail_rate"), _higher_p(zone, ref, "flip_rate")
    acc_sep = any(_ci_separated(s, ref) for s in zone)
    strong = acc_sep or any(p is not None and p < alpha for p in (p_fail, p_flip))
    return {"evidence": "strong" if strong else "weak", "reference_bin": ref["bin_idx"],
            "acc_ci_separated": acc_sep, "p_fail_higher": _json_num(p_fail),
            "p_flip_higher": _json_num(p_flip), "alpha": alpha}


def _weak_why(span: str, reference_bin: int | None, alpha: float) -> str:
    if reference_bin is None:
        return f"{span} all stand out by z-score: no stable bin is left to compare against"
    return (f"{span} stands out by z-score, but its accuracy CI overlaps bin {reference_bin}'s "
            f"and its fail/flip rates are not significantly higher (one-sided Fisher exact "
            f"test, alpha {alpha:g})")


def detect_transition(
    stats_for_run: list[Row], baseline_stats: list[Row] | None, z_threshold: float,
    alpha: float = ALPHA,
) -> tuple[int | None, int | None, Row]:
    """(start_bin, end_bin, rationale) for one run; both bins None when there is no zone."""
    stats = sorted(stats_for_run, key=lambda s: s["bin_idx"])
    rationale: Row = {"method": METHOD, "threshold": z_threshold,
                      "collapse_fraction": COLLAPSE_FRACTION,
                      "acc_drop_vs": "baseline" if baseline_stats else "first_bin"}
    if not stats:
        return None, None, {**rationale, "verdict": "no_data", "why": "no bin statistics"}
    floor = collapse_floor(stats, baseline_stats)
    signals = _signals(stats, baseline_stats)
    z = {k: zscores(v) for k, v in signals.items()}
    table = _bin_table(stats, z, floor, z_threshold)
    collapse_bin = next((b["bin_idx"] for b in table if b["collapsed"]), None)
    rationale.update(collapse_floor=_json_num(floor), collapse_bin=collapse_bin, bins=table)
    if len(stats) < 2:
        return None, None, {**rationale, "verdict": "too_few_bins",
                            "why": "one length bin: nothing to compare across length"}
    if all(_is_constant(v) for v in signals.values()):
        return None, None, {**rationale, "verdict": "constant",
                            "why": "every signal is equal in all bins; z-scores are undefined"}
    zone = _first_zone(table)
    if zone is None:
        return None, None, {**rationale, "verdict": "no_instability",
                            "why": f"no bin above the collapse floor has z > {z_threshold:g}"}
    evidence = _evidence(stats, *zone, alpha)
    rationale.update(evidence)
    start_bin, end_bin = stats[zone[0]]["bin_idx"], stats[zone[1]]["bin_idx"]
    if evidence["evidence"] == "weak":
        why = _weak_why(bin_span(start_bin, end_bin), evidence["reference_bin"], alpha)
        return None, None, {**rationale, "verdict": "weak", "candidate": [start_bin, end_bin],
                            "why": why}
    fired = sorted({t for b in table[zone[0]:zone[1] + 1] for t in b["triggers"]})
    why = (f"z of {', '.join(fired)} above {z_threshold:g} while accuracy is still above the "
           f"collapse floor ({floor:.2f})")
    return start_bin, end_bin, {**rationale, "verdict": "transition", "why": why}


def write_transitions(conn: sqlite3.Connection, exp_group_id: str,
                      cfg: AnalysisConfig) -> list[Row]:
    """Detect the zone of every run from stored bin_stats; rerunning replaces, never adds."""
    runs = queries.runs_of_group(conn, exp_group_id)
    baselines = queries.baseline_by_dataset(runs)
    by_run: dict[int, list[Row]] = defaultdict(list)
    for row in queries.bin_stats_rows(conn, exp_group_id):
        by_run[row["run_id"]].append(row)
    results = []
    for run in runs:
        base = baselines.get(run["dataset_id"])
        base_stats = None if base is None or base["run_id"] == run["run_id"] \
            else by_run.get(base["run_id"])
        start, end, rationale = detect_transition(by_run.get(run["run_id"], []), base_stats,
                                                  cfg.z_threshold)
        results.append({"run_id": run["run_id"], "transition_bin_start": start,
                        "transition_bin_end": end, "rationale": rationale})
    with transaction(conn):
        conn.executemany("DELETE FROM transition_summary WHERE run_id = ?",
                         [(r["run_id"],) for r in runs])
        conn.executemany(
            "INSERT INTO transition_summary (run_id, transition_bin_start, transition_bin_end, "
            "rationale_json) VALUES (?, ?, ?, ?)",
            [(r["run_id"], r["transition_bin_start"], r["transition_bin_end"],
              json.dumps(r["rationale"], allow_nan=False)) for r in results],
        )
    return results
