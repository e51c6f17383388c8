"""Persist one answered request: response and telemetry rows, together or not at all."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

from kv_transition.db.connect import transaction
from kv_transition.engines.base import EngineError, GenerationResult


def record_result(conn: sqlite3.Connection, request_id: int, result: GenerationResult,
                  attempts: int) -> bool:
    """Store the answer and free the request's lease; False when it was already answered.

    Leases make a second answer rare (a worker whose lease expired while it was still
    computing); the first answer stands and the late one is dropped instead of crashing.
    """
    return record_batch(conn, [(request_id, result, attempts)]) == 1


def record_batch(conn: sqlite3.Connection,
                 answers: list[tuple[int, GenerationResult, int]]) -> int:
    """Several answers in one commit (one example's settings arrive together); returns how
    many were new. benchmarks/scale.py measures what a commit costs the single writer."""
    now = datetime.now(timezone.utc).isoformat()
    with transaction(conn):
        return sum(_store(conn, rid, result, attempts, now) for rid, result, attempts in answers)


def _store(conn: sqlite3.Connection, request_id: int, result: GenerationResult, attempts: int,
           now: str) -> bool:
    conn.execute("DELETE FROM leases WHERE request_id=?", (request_id,))
    cur = conn.execute(
        "INSERT INTO responses(request_id, text, finish_reason, completion_tokens, raw_json, "
        "created_at) VALUES (?,?,?,?,?,?) ON CONFLICT(request_id) DO NOTHING",
        (request_id, result.text, result.finish_reason, result.completion_tokens,
         json.dumps({**result.raw, "attempts": attempts}), now))
    if cur.rowcount == 0:
        return False
    conn.execute(
        "INSERT INTO telemetry(request_id, latency_s, ttfb_s, prefill_s, decode_s, peak_mem_mb, "
        "kv_bytes, notes_json) VALUES (?,?,?,?,?,?,?,?)",
        (request_id, result.latency_s, result.ttfb_s, result.prefill_s, result.decode_s,
         result.peak_mem_mb, result.kv_bytes, json.dumps(result.notes)))
    if result.prompt_tokens is not None:
        conn.execute("UPDATE requests SET prompt_tokens=? WHERE request_id=?",
                     (result.prompt_tokens, request_id))
    return True


def failure_result(error: EngineError, attempts: int, seconds: float) -> GenerationResult:
    """A request that failed after its retries is answered with the failure, so the run goes on.

    Built where the failure happens (possibly a Ray actor): a plain result pickles safely,
    an exception with keyword-only arguments does not.
    """
    finish = "timeout" if error.kind == "TIMEOUT" else "error"
    return GenerationResult(text="", finish_reason=finish, latency_s=seconds,
                            raw={"error": str(error), "error_kind": error.kind},
                            notes={"failed_after_attempts": attempts})


def record_error(conn: sqlite3.Connection, request_id: int, error: EngineError,
                 attempts: int, seconds: float) -> bool:
    return record_result(conn, request_id, failure_result(error, attempts, seconds), attempts)
