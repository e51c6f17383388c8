"""The functional canary's rows of the score phase: ``functional_scores``, beside ``scores``.

For every answer to a functional item: the parts of a tool call (valid JSON, function name,
arguments exact and per argument, schema-valid) or the sandbox's verdict on the code (exit
status, timeout, stderr). The sandbox runs in parallel here, before ``score``; its results are
cached (``eval.functional.run_program``), so the ``pass_at_1`` metric does not run them again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from kv_transition.db.connect import transaction
from kv_transition.eval.functional import code_result, score_tool_call


_FUNCTIONAL_ANSWERS = """
SELECT r.request_id, s.text, s.finish_reason, e.meta_json
FROM requests r
JOIN responses s ON s.request_id = r.request_id
JOIN runs u ON u.run_id = r.run_id
JOIN manifest_entries m ON m.entry_id = r.entry_id
JOIN examples e ON e.dataset_id = m.dataset_id AND e.example_id = m.example_id
WHERE u.exp_group_id = ? AND json_extract(e.meta_json, '$.metric') IN ('pass_at_1', 'tool_call')
"""


def _row(request_id: int, text: str, failed: bool, meta: dict) -> tuple:
    """One functional_scores row; an engine error or timeout scores as a failure, unrun."""
    if meta["metric"] == "tool_call":
        t = score_tool_call("" if failed else text, meta)
        return (request_id, "tool", int(t.acc), None, None, None, None, None,
                int(t.valid_json), int(t.name_ok), int(t.args_exact), t.args_match,
                int(t.schema_valid))
    if failed or not text.strip():
        return (request_id, "code", 0, None, 0, None, None, "no answer") + (None,) * 5
    res = code_result(text, meta)
    return (request_id, "code", int(res.passed), res.exit_code, int(res.timed_out),
            round(res.duration, 4), res.isolation, res.stderr[-400:]) + (None,) * 5


def score_functional(conn: sqlite3.Connection, exp_group_id: str,
                     workers: int | None = None) -> int:
    """Score every functional answer of the group into ``functional_scores``; returns the count.

    Sandbox runs go in parallel (each is a separate process, so threads suffice); results are
    cached, so the ``pass_at_1`` metric that ``score`` calls afterwards does not run them again.
    """
    rows = conn.execute(_FUNCTIONAL_ANSWERS, (exp_group_id,)).fetchall()
    jobs = [(r["request_id"], r["text"], r["finish_reason"] in ("error", "timeout"),
             json.loads(r["meta_json"])) for r in rows]
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        scored = list(pool.map(lambda job: _row(*job), jobs))
    with transaction(conn):
        conn.executemany("DELETE FROM functional_scores WHERE request_id=?",
                         [(j[0],) for j in jobs])
        conn.executemany(
            "INSERT INTO functional_scores(request_id, kind, passed, exit_code, timed_out, "
            "duration_s, sandbox, stderr_tail, valid_json, name_ok, args_exact, args_match, "
            "schema_valid) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", scored)
    return len(scored)
