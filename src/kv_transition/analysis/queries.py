"""SQL helpers for the analysis and report phases; every function returns plain dicts/lists."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

BASELINE_POLICY = "full"
BASELINE_BUDGET = 1.0


def _rows(conn: sqlite3.Connection, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    cur = conn.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def experiment(conn: sqlite3.Connection, exp_group_id: str) -> dict[str, Any] | None:
    rows = _rows(conn, "SELECT * FROM experiments WHERE exp_group_id = ?", (exp_group_id,))
    return rows[0] if rows else None


def is_baseline(run: dict[str, Any]) -> bool:
    return run["kv_policy"] == BASELINE_POLICY and float(run["kv_budget"]) == BASELINE_BUDGET


def runs_of_group(conn: sqlite3.Connection, exp_group_id: str) -> list[dict[str, Any]]:
    """Runs in a stable order: per dataset, the full-cache baseline first, then by policy and
    descending budget (the order tables and legends read best in)."""
    runs = _rows(
        conn,
        "SELECT r.*, d.name AS dataset_name, d.task AS dataset_task FROM runs r "
        "JOIN datasets d ON d.dataset_id = r.dataset_id WHERE r.exp_group_id = ?",
        (exp_group_id,),
    )
    runs.sort(key=lambda r: (r["dataset_id"], not is_baseline(r), r["kv_policy"],
                             -float(r["kv_budget"]), r["run_id"]))
    return runs


def baseline_by_dataset(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The full-cache run of each dataset: every comparison is paired against it."""
    return {r["dataset_id"]: r for r in runs if is_baseline(r)}


def request_rows(conn: sqlite3.Connection, exp_group_id: str) -> list[dict[str, Any]]:
    """One row per evaluated request (a scores or a failures row exists) of the group.

    ``acc`` is NULL only for a failure that was never scored; ``failed`` is 1 when a failures
    row exists. Requests not yet scored are left out: they are work in progress, not results.
    """
    return _rows(
        conn,
        """
        SELECT q.run_id, q.request_id, q.entry_id, m.bin_idx,
               s.acc, s.metric, s.pred_norm,
               -- requests on one context are one cluster (an explicit meta_json "cluster" key
               -- wins): their answers are correlated, so intervals must not count them twice
               DENSE_RANK() OVER (ORDER BY COALESCE('k:' || json_extract(e.meta_json,
                   '$.cluster'), 'c:' || e.context)) AS cluster,
               CASE WHEN f.request_id IS NULL THEN 0 ELSE 1 END AS failed, f.failure_type,
               t.latency_s, t.peak_mem_mb, t.kv_bytes, t.notes_json,
               p.text, p.finish_reason
        FROM requests q
        JOIN runs r ON r.run_id = q.run_id
        JOIN manifest_entries m ON m.entry_id = q.entry_id
        JOIN examples e ON e.dataset_id = m.dataset_id AND e.example_id = m.example_id
        LEFT JOIN scores s ON s.request_id = q.request_id
        LEFT JOIN failures f ON f.request_id = q.request_id
        LEFT JOIN telemetry t ON t.request_id = q.request_id
        LEFT JOIN responses p ON p.request_id = q.request_id
        WHERE r.exp_group_id = ? AND (s.request_id IS NOT NULL OR f.request_id IS NOT NULL)
        ORDER BY q.run_id, m.bin_idx, q.entry_id
        """,
        (exp_group_id,),
    )


def count_scored(conn: sqlite3.Connection, exp_group_id: str) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM scores s JOIN requests q ON q.request_id = s.request_id "
        "JOIN runs r ON r.run_id = q.run_id WHERE r.exp_group_id = ?",
        (exp_group_id,),
    ).fetchone()
    return int(row[0])


def count_requests(conn: sqlite3.Connection, exp_group_id: str) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM requests q JOIN runs r ON r.run_id = q.run_id "
        "WHERE r.exp_group_id = ?",
        (exp_group_id,),
    ).fetchone()
    return int(row[0])


def bins_of_dataset(conn: sqlite3.Connection, dataset_id: str) -> list[dict[str, Any]]:
    return _rows(
        conn,
        "SELECT bin_idx, token_min, token_max, n_examples FROM bins WHERE dataset_id = ? "
        "ORDER BY bin_idx",
        (dataset_id,),
    )


def datasets_of_group(conn: sqlite3.Connection, exp_group_id: str) -> list[dict[str, Any]]:
    return _rows(
        conn,
        "SELECT DISTINCT d.* FROM datasets d JOIN runs r ON r.dataset_id = d.dataset_id "
        "WHERE r.exp_group_id = ? ORDER BY d.dataset_id",
        (exp_group_id,),
    )


def bin_stats_rows(conn: sqlite3.Connection, exp_group_id: str) -> list[dict[str, Any]]:
    """Stored bin_stats joined with the run's setting and the bin's token range."""
    return _rows(
        conn,
        """
        SELECT b.*, r.kv_policy, r.kv_budget, r.dataset_id, r.model_name,
               bn.token_min, bn.token_max
        FROM bin_stats b
        JOIN runs r ON r.run_id = b.run_id
        LEFT JOIN bins bn ON bn.dataset_id = r.dataset_id AND bn.bin_idx = b.bin_idx
        WHERE r.exp_group_id = ?
        ORDER BY r.run_id, b.bin_idx
        """,
        (exp_group_id,),
    )


def transition_rows(conn: sqlite3.Connection, exp_group_id: str) -> list[dict[str, Any]]:
    rows = _rows(
        conn,
        "SELECT t.* FROM transition_summary t JOIN runs r ON r.run_id = t.run_id "
        "WHERE r.exp_group_id = ? ORDER BY t.run_id",
        (exp_group_id,),
    )
    for row in rows:
        row["rationale"] = json.loads(row["rationale_json"])
    return rows


def failure_counts(conn: sqlite3.Connection, exp_group_id: str) -> list[dict[str, Any]]:
    """Failures per run and type."""
    return _rows(
        conn,
        "SELECT q.run_id, f.failure_type, COUNT(*) AS n FROM failures f "
        "JOIN requests q ON q.request_id = f.request_id JOIN runs r ON r.run_id = q.run_id "
        "WHERE r.exp_group_id = ? GROUP BY q.run_id, f.failure_type "
        "ORDER BY q.run_id, n DESC, f.failure_type",
        (exp_group_id,),
    )


def note(notes_json: str | None, key: str) -> Any:
    """One key of a request's telemetry notes; None when absent or unreadable."""
    try:
        notes = json.loads(notes_json or "{}")
    except json.JSONDecodeError:
        return None
    return notes.get(key) if isinstance(notes, dict) else None


def peak_mem_scope(notes_json: str | None) -> str:
    """'request' or 'process' as the engine recorded it; 'unknown' when it did not say."""
    scope = note(notes_json, "peak_mem_scope")
    return scope if scope in ("request", "process") else "unknown"
