"""The ``analyze`` phase: bin_stats -> transition_summary -> plots and a CSV table."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path
from typing import Any

from kv_transition.analysis import queries
from kv_transition.analysis.aggregate import compute_bin_stats
from kv_transition.analysis.plots import write_plots
from kv_transition.analysis.transition import write_transitions
from kv_transition.errors import BadInput
from kv_transition.settings import AnalysisConfig

CSV_COLUMNS = (
    "run_id", "dataset_id", "kv_policy", "kv_budget", "bin_idx", "token_min", "token_max", "n",
    "acc_mean", "acc_ci_low", "acc_ci_high", "acc_std", "acc_delta", "acc_delta_ci_low",
    "acc_delta_ci_high", "flip_rate", "divergence", "fail_rate", "lat_p50", "lat_p95",
    "mem_p95", "kv_bytes_mean", "acc_ci_method", "fail_ci_low", "fail_ci_high",
    "fail_ci_method", "acc_delta_ci_method", "acc_delta_p", "acc_delta_test", "n_paired",
    "changed_rate", "n_clusters",
)


def _require_scores(conn: sqlite3.Connection, exp_group_id: str) -> None:
    if not queries.runs_of_group(conn, exp_group_id):
        raise BadInput(f"experiment {exp_group_id!r} has no runs in the database: "
                       "run `prepare` and `run` first")
    if queries.count_scored(conn, exp_group_id) == 0:
        raise BadInput(f"experiment {exp_group_id!r} has no scored requests: "
                       "run `score` first")


def write_bin_stats_csv(conn: sqlite3.Connection, exp_group_id: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(queries.bin_stats_rows(conn, exp_group_id))
    return path


def analyze(conn: sqlite3.Connection, exp_group_id: str, cfg: AnalysisConfig,
            run_dir: Path, looks: int = 1) -> dict[str, Any]:
    """Aggregate, detect transitions, draw plots; every output is regenerated from the DB.

    ``looks``: how many analyses refine may make of this experiment; the detector spends
    alpha / looks on each (transition.planned_looks)."""
    _require_scores(conn, exp_group_id)
    run_dir = Path(run_dir)
    stats = compute_bin_stats(conn, exp_group_id, cfg)
    transitions = write_transitions(conn, exp_group_id, cfg, looks)
    plots = write_plots(conn, exp_group_id, run_dir / "plots")
    table = write_bin_stats_csv(conn, exp_group_id, run_dir / "tables" / "bin_stats.csv")
    return {
        "exp_group_id": exp_group_id,
        "n_runs": len(transitions),
        "n_bin_stats": len(stats),
        "verdicts": {t["run_id"]: t["rationale"]["verdict"] for t in transitions},
        "plots": [str(p) for p in plots],
        "table": str(table),
    }
