"""Per run x length-bin aggregates, written to ``bin_stats``.

Every compressed run is compared to the full-cache baseline on the *same* manifest entries
(paired by entry_id). For 0/1 metrics the variance is tied to the mean (p(1-p)), so a std spike
alone is not evidence of instability; flip rate, changed-answer rate and divergence against the
full cache are the direct instability signals, and the paired delta is the honest cost of
compression. Intervals and paired tests come from ``intervals`` (Wilson, cluster BCa, exact
McNemar); the method each used is stored beside it.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter, defaultdict
from functools import lru_cache
from typing import Any

import numpy as np

from kv_transition.analysis import queries
from kv_transition.analysis.intervals import mean_interval, paired_difference
from kv_transition.db.connect import transaction
from kv_transition.settings import AnalysisConfig

MIB = 2 ** 20
CORRECT_AT = 0.5  # acc >= 0.5 counts as correct when deciding whether an answer "flipped"

BIN_STATS_COLUMNS = (
    "run_id", "bin_idx", "n", "acc_mean", "acc_ci_low", "acc_ci_high", "acc_std", "fail_rate",
    "lat_p50", "lat_p95", "mem_p95", "kv_bytes_mean", "acc_delta", "acc_delta_ci_low",
    "acc_delta_ci_high", "flip_rate", "divergence", "acc_ci_method", "fail_ci_low",
    "fail_ci_high", "fail_ci_method", "acc_delta_ci_method", "acc_delta_p", "acc_delta_test",
    "n_paired", "changed_rate", "n_clusters",
)
PAIRED_COLUMNS = ("acc_delta", "acc_delta_ci_low", "acc_delta_ci_high", "acc_delta_ci_method",
                  "acc_delta_p", "acc_delta_test", "flip_rate", "divergence", "changed_rate",
                  "n_paired")

Row = dict[str, Any]


@lru_cache(maxsize=65536)  # answers repeat across settings (and in the power suite)
def token_f1(pred: str, ref: str) -> float:
    """Bag-of-tokens F1 between two already-normalized answers; two empty answers agree."""
    a, b = pred.split(), ref.split()
    if not a and not b:
        return 1.0
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def _acc(row: Row) -> float:
    # a failure that was never scored counts as wrong, as the scorer does for engine errors
    return float(row["acc"]) if row["acc"] is not None else 0.0


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _own_stats(rows: list[Row], cfg: AnalysisConfig, seed: list[int]) -> Row:
    """Accuracy, spread, failures, latency and memory of one run in one bin."""
    acc = [_acc(r) for r in rows]
    clusters = [r.get("cluster", i) for i, r in enumerate(rows)]
    acc_ci = mean_interval(acc, clusters, cfg.ci, cfg.n_bootstrap, seed)
    fail_ci = mean_interval([float(r["failed"]) for r in rows], clusters, cfg.ci,
                            cfg.n_bootstrap, seed)
    latencies = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    peaks = [r["peak_mem_mb"] for r in rows if r["peak_mem_mb"] is not None]
    kv = [r["kv_bytes"] for r in rows if r["kv_bytes"] is not None]
    return {
        "n": len(rows),
        "acc_mean": float(np.mean(acc)),
        "acc_ci_low": acc_ci.low,
        "acc_ci_high": acc_ci.high,
        "acc_ci_method": acc_ci.method,
        "fail_ci_low": fail_ci.low,
        "fail_ci_high": fail_ci.high,
        "fail_ci_method": fail_ci.method,
        "n_clusters": len(set(clusters)),
        # sample std (ddof=1): the bin is a sample of the task; undefined (NULL) for n = 1
        "acc_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
        "fail_rate": float(np.mean([r["failed"] for r in rows])),
        "lat_p50": _percentile(latencies, 50),
        "lat_p95": _percentile(latencies, 95),
        "mem_p95": _percentile(peaks, 95),
        "kv_bytes_mean": _mean(kv),
    }


def _paired_stats(rows: list[Row], full: dict[int, Row], cfg: AnalysisConfig,
                  seed: list[int]) -> Row:
    """Delta, flip rate and divergence against the full cache on the entries both answered."""
    pairs = [(r, full[r["entry_id"]]) for r in rows if r["entry_id"] in full]
    if not pairs:
        return dict.fromkeys(PAIRED_COLUMNS)
    acc = np.array([_acc(r) for r, _ in pairs])
    acc_full = np.array([_acc(f) for _, f in pairs])
    clusters = [r.get("cluster", i) for i, (r, _) in enumerate(pairs)]
    test = paired_difference(acc, acc_full, clusters, cfg.ci, cfg.n_bootstrap, seed)
    flips = (acc >= CORRECT_AT) != (acc_full >= CORRECT_AT)
    preds = [(r["pred_norm"] or "", f["pred_norm"] or "") for r, f in pairs]
    return {
        "acc_delta": test.delta,
        "acc_delta_ci_low": _finite(test.low),
        "acc_delta_ci_high": _finite(test.high),
        "acc_delta_ci_method": test.ci_method,
        "acc_delta_p": test.p,
        "acc_delta_test": test.test,
        "flip_rate": float(np.mean(flips)),
        "divergence": float(np.mean([1.0 - token_f1(a, b) for a, b in preds])),
        # a failed request has no answer: it counts as changed (the full cache answered)
        "changed_rate": float(np.mean([a != b or r["failed"] for (a, b), (r, _)
                                       in zip(preds, pairs)])),
        "n_paired": len(pairs),
    }


def _baseline_paired(n: int) -> Row:
    """The full cache against itself: no difference, nothing to test."""
    return {**dict.fromkeys(PAIRED_COLUMNS, 0.0), "acc_delta_ci_method": None,
            "acc_delta_p": None, "acc_delta_test": None, "n_paired": n}


def _group_by_run_bin(rows: list[Row]) -> dict[int, dict[int, list[Row]]]:
    grouped: dict[int, dict[int, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["run_id"]][row["bin_idx"]].append(row)
    return grouped


def run_stats(run: Row, bins: dict[int, list[Row]], baseline: Row | None,
               full_by_entry: dict[int, Row], cfg: AnalysisConfig) -> list[Row]:
    stats = []
    for bin_idx in sorted(bins):
        # one independent, reproducible stream per (run, bin); SeedSequence needs entries >= 0
        seed = [cfg.seed % 2**32, run["run_id"], bin_idx]
        row = {"run_id": run["run_id"], "bin_idx": bin_idx}
        row.update(_own_stats(bins[bin_idx], cfg, seed))
        if baseline is not None and baseline["run_id"] == run["run_id"]:
            row.update(_baseline_paired(row["n"]))
        elif baseline is not None:
            row.update(_paired_stats(bins[bin_idx], full_by_entry, cfg, seed + [1]))
        else:
            row.update(_paired_stats([], {}, cfg, seed))
        stats.append(row)
    return stats


def compute_bin_stats(conn: sqlite3.Connection, exp_group_id: str,
                      cfg: AnalysisConfig) -> list[Row]:
    """Compute and store bin_stats for every run of the group; rerunning replaces, never adds.

    The population of a bin is every request of the run with a scores or a failures row; n is
    its size and every rate (fail_rate included) uses it as denominator.
    """
    runs = queries.runs_of_group(conn, exp_group_id)
    baselines = queries.baseline_by_dataset(runs)
    grouped = _group_by_run_bin(queries.request_rows(conn, exp_group_id))
    stats: list[Row] = []
    for run in runs:
        baseline = baselines.get(run["dataset_id"])
        full_by_entry = {}
        if baseline is not None:
            full_rows = grouped.get(baseline["run_id"], {})
            full_by_entry = {r["entry_id"]: r for rows in full_rows.values() for r in rows}
        stats += run_stats(run, grouped.get(run["run_id"], {}), baseline, full_by_entry, cfg)
    _write_bin_stats(conn, [r["run_id"] for r in runs], stats)
    return stats


def _write_bin_stats(conn: sqlite3.Connection, run_ids: list[int], stats: list[Row]) -> None:
    marks = ",".join("?" * len(BIN_STATS_COLUMNS))
    with transaction(conn):
        conn.executemany("DELETE FROM bin_stats WHERE run_id = ?", [(i,) for i in run_ids])
        conn.executemany(
            f"INSERT INTO bin_stats ({','.join(BIN_STATS_COLUMNS)}) VALUES ({marks})",
            [tuple(s[c] for c in BIN_STATS_COLUMNS) for s in stats],
        )


def run_memory(conn: sqlite3.Connection, exp_group_id: str) -> dict[int, Row]:
    """Per run: mean measured KV MiB per request, peak-memory p95 and the peak's scopes.

    Missing measurements stay None rather than 0 so no figure claims a saving never measured.
    """
    kv, peaks, scopes = defaultdict(list), defaultdict(list), defaultdict(set)
    bounded = defaultdict(list)
    for r in queries.request_rows(conn, exp_group_id):
        if r["kv_bytes"] is not None:
            kv[r["run_id"]].append(r["kv_bytes"] / MIB)
            bounded[r["run_id"]].append(queries.note(r["notes_json"], "kv_bounded_share") or 0.0)
        if r["peak_mem_mb"] is not None:
            peaks[r["run_id"]].append(r["peak_mem_mb"])
            scopes[r["run_id"]].add(queries.peak_mem_scope(r["notes_json"]))
    return {i: {"kv_mib": _mean(kv[i]), "peak_p95": _percentile(peaks[i], 95),
                "scopes": scopes[i], "bounded_share": _mean(bounded[i]) or 0.0}
            for i in set(kv) | set(peaks)}
