"""Join answers with gold strings; write ``scores`` and ``failures`` for an experiment.

Scoring is cheap and pure, so it is recomputed from the responses every time (delete and
insert in one transaction): a metric fix applies to old runs, and reruns never duplicate rows.
"""

from __future__ import annotations

import json
import sqlite3

from kv_transition.db.connect import transaction
from kv_transition.eval.failure_taxonomy import classify_failure
from kv_transition.eval.metrics import score_prediction

_ANSWERED = """
SELECT r.request_id, s.text, s.finish_reason, s.raw_json, e.answers_json, e.meta_json
FROM requests r
JOIN responses s ON s.request_id = r.request_id
JOIN runs u ON u.run_id = r.run_id
JOIN manifest_entries m ON m.entry_id = r.entry_id
JOIN examples e ON e.dataset_id = m.dataset_id AND e.example_id = m.example_id
WHERE u.exp_group_id = ?
"""


def score_row(row: sqlite3.Row) -> tuple[tuple, tuple | None]:
    """(scores row, failures row or None) for one answered request."""
    answers = json.loads(row["answers_json"])
    meta = json.loads(row["meta_json"])
    error = json.loads(row["raw_json"]).get("error")
    result = score_prediction(row["text"], answers, meta.get("metric", "qa_f1"), meta)
    failure = classify_failure(row["text"], row["finish_reason"], error)
    if failure and failure[0] == "TRUNCATED" and result.acc >= 1.0:
        # hit max_tokens after a complete, correct answer: a length setting, not a failure
        failure = None
    if row["finish_reason"] in ("error", "timeout"):
        result.acc = result.em = result.f1 = 0.0
    scores = (row["request_id"], result.em, result.f1, result.acc, meta.get("metric", "qa_f1"),
              result.pred_norm, result.gold_norm)
    return scores, (row["request_id"], *failure) if failure else None


def score_experiment(conn: sqlite3.Connection, exp_group_id: str) -> dict[str, int]:
    rows = conn.execute(_ANSWERED, (exp_group_id,)).fetchall()
    scored = [score_row(row) for row in rows]  # computed before the transaction opens
    ids = [(row["request_id"],) for row in rows]
    with transaction(conn):
        conn.executemany("DELETE FROM scores WHERE request_id=?", ids)
        conn.executemany("DELETE FROM failures WHERE request_id=?", ids)
        conn.executemany(
            "INSERT INTO scores(request_id, em, f1, acc, metric, pred_norm, gold_norm) "
            "VALUES (?,?,?,?,?,?,?)", [s for s, _ in scored])
        conn.executemany(
            "INSERT INTO failures(request_id, failure_type, message) VALUES (?,?,?)",
            [f for _, f in scored if f])
    return {"scored": len(scored), "failures": sum(1 for _, f in scored if f)}
