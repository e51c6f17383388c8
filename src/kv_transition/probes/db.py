"""Reading and writing the novelty tables (schema migration 3)."""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:  # the report reads these tables without importing torch
    from kv_transition.probes.compression import Retention
    from kv_transition.probes.temporal import SeriesStats

Row = dict[str, Any]
NOT_PER_LAYER = -1  # layer of the predictive metrics
ALL_HEADS = -1  # head of a layer's selected heads concatenated


def _num(x: Any) -> float | None:
    """SQLite has no NaN: undefined numbers are NULL."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def series_json(values: np.ndarray) -> str:
    return json.dumps([_num(v) for v in np.asarray(values, dtype=np.float64)])


def series_array(text: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in json.loads(text)], dtype=np.float64)


# ---------------------------------------------------------------- writing

def find_run(conn: sqlite3.Connection, exp_group_id: str, prompt_id: str) -> Row | None:
    row = conn.execute("SELECT * FROM novelty_runs WHERE exp_group_id=? AND prompt_id=?",
                       (exp_group_id, prompt_id)).fetchone()
    return dict(row) if row else None


def delete_run(conn: sqlite3.Connection, novelty_run_id: int) -> None:
    conn.execute("DELETE FROM novelty_runs WHERE novelty_run_id=?", (novelty_run_id,))


def start_run(conn: sqlite3.Connection, **fields: Any) -> int:
    """Insert a run in status 'capturing'; a run left so by a crash is redone next time."""
    fields = {**fields, "status": "capturing",
              "created_at": datetime.now(timezone.utc).isoformat()}
    cols = ", ".join(fields)
    cur = conn.execute(f"INSERT INTO novelty_runs({cols}) VALUES ({', '.join('?' * len(fields))})",
                       tuple(fields.values()))
    return int(cur.lastrowid)


def finish_run(conn: sqlite3.Connection, novelty_run_id: int, n_generated: int,
               finish_reason: str, text: str, meta: dict) -> None:
    conn.execute("UPDATE novelty_runs SET status='complete', n_generated=?, finish_reason=?, "
                 "text=?, meta_json=? WHERE novelty_run_id=?",
                 (n_generated, finish_reason, text, json.dumps(meta), novelty_run_id))


def insert_tokens(conn: sqlite3.Connection, run_id: int, token_ids: list[int], pieces: list[str],
                  n_prompt: int, logprob: np.ndarray, entropy: np.ndarray,
                  transitions: np.ndarray) -> None:
    conn.executemany(
        "INSERT INTO novelty_tokens(novelty_run_id, position, token_id, token_text, generated, "
        "logprob, entropy, transition) VALUES (?,?,?,?,?,?,?,?)",
        [(run_id, i, int(tok), pieces[i], int(i >= n_prompt), _num(logprob[i]),
          _num(entropy[i]), int(transitions[i])) for i, tok in enumerate(token_ids)])


def insert_series(conn: sqlite3.Connection, run_id: int,
                  series: dict[tuple[int, int, str], np.ndarray]) -> None:
    conn.executemany(
        "INSERT INTO novelty_series(novelty_run_id, layer, head, metric, values_json) "
        "VALUES (?,?,?,?,?)",
        [(run_id, layer, head, metric, series_json(values))
         for (layer, head, metric), values in series.items()])


def insert_stats(conn: sqlite3.Connection, run_id: int, segment_start: int,
                 stats: dict[tuple[int, int, str], "SeriesStats"]) -> None:
    rows = []
    for (layer, head, metric), s in stats.items():
        e = s.enrichment
        rows.append((run_id, layer, head, metric, segment_start, s.n, _num(s.mean), _num(s.std),
                     _num(s.kurtosis), _num(s.skew), len(s.spikes), _num(s.burstiness),
                     _num(s.acf_lag1), _num(s.acf_band), _num(s.uniformity_p), e.n_transitions,
                     e.hits, _num(e.expected), _num(e.p_value), json.dumps(s.spikes),
                     json.dumps([_num(v) for v in s.acf])))
    conn.executemany(
        "INSERT INTO novelty_stats(novelty_run_id, layer, head, metric, segment_start, n, mean, "
        "std, kurtosis, skew, n_spikes, burstiness, acf_lag1, acf_band, uniformity_p, "
        "n_transitions, transition_hits, transition_expected, transition_p, spikes_json, "
        "acf_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def insert_compression(conn: sqlite3.Connection, run_id: int,
                       rows: Iterable[tuple[int, int, str, str, float, "Retention", float, float]]
                       ) -> None:
    conn.executemany(
        "INSERT INTO novelty_compression(novelty_run_id, layer, head, metric, kv_policy, "
        "kv_budget, n_positions, n_high, kept_frac_all, kept_frac_high, spearman_rho, "
        "spearman_p) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [(run_id, layer, head, metric, policy, budget, r.n_positions, r.n_high,
          _num(r.kept_frac_all), _num(r.kept_frac_high), _num(rho), _num(p))
         for layer, head, metric, policy, budget, r, rho, p in rows])


# ---------------------------------------------------------------- reading

def complete_runs(conn: sqlite3.Connection, exp_group_id: str) -> list[Row]:
    rows = conn.execute("SELECT * FROM novelty_runs WHERE exp_group_id=? AND status='complete' "
                        "ORDER BY novelty_run_id", (exp_group_id,)).fetchall()
    out = []
    for r in rows:
        row = dict(r)
        row["meta"] = json.loads(row.pop("meta_json") or "{}")
        out.append(row)
    return out


def stats_rows(conn: sqlite3.Connection, exp_group_id: str) -> list[Row]:
    rows = conn.execute(
        "SELECT s.*, r.prompt_id, r.prompt_kind FROM novelty_stats s JOIN novelty_runs r "
        "USING(novelty_run_id) WHERE r.exp_group_id=? AND r.status='complete' "
        "ORDER BY r.novelty_run_id, s.layer, s.head, s.metric", (exp_group_id,)).fetchall()
    out = []
    for r in rows:
        row = dict(r)
        row["spikes"] = json.loads(row.pop("spikes_json"))
        row["acf"] = [np.nan if v is None else v for v in json.loads(row.pop("acf_json"))]
        out.append(row)
    return out


def compression_rows(conn: sqlite3.Connection, exp_group_id: str) -> list[Row]:
    return [dict(r) for r in conn.execute(
        "SELECT c.*, r.prompt_id FROM novelty_compression c JOIN novelty_runs r "
        "USING(novelty_run_id) WHERE r.exp_group_id=? AND r.status='complete' "
        "ORDER BY c.kv_policy, c.kv_budget DESC, r.novelty_run_id, c.layer, c.head",
        (exp_group_id,)).fetchall()]


def series(conn: sqlite3.Connection, run_id: int, layer: int, head: int, metric: str
           ) -> np.ndarray | None:
    row = conn.execute("SELECT values_json FROM novelty_series WHERE novelty_run_id=? AND "
                       "layer=? AND head=? AND metric=?", (run_id, layer, head, metric)).fetchone()
    return series_array(row[0]) if row else None


def token_rows(conn: sqlite3.Connection, run_id: int) -> list[Row]:
    return [dict(r) for r in conn.execute(
        "SELECT * FROM novelty_tokens WHERE novelty_run_id=? ORDER BY position", (run_id,))]


def has_novelty(conn: sqlite3.Connection, exp_group_id: str) -> bool:
    try:
        row = conn.execute("SELECT 1 FROM novelty_runs WHERE exp_group_id=? AND "
                           "status='complete' LIMIT 1", (exp_group_id,)).fetchone()
    except sqlite3.OperationalError:  # a database from before migration 3
        return False
    return row is not None
