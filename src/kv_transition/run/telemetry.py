"""Persist one answered request: response and telemetry rows, together or not at all."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

from kv_transition.db.connect import transaction
from kv_transition.engines.base import EngineError, GenerationResult


def record_result(conn: sqlite3.Connection, request_id: int, result: GenerationResult,
                  attempts: int) -> None:
    now = datetime.now(timezone.utc).isoformat()
    with transaction(conn):
        conn.execute(
            "INSERT INTO responses(request_id, text, finish_reason, completion_tokens, raw_json, "
            "created_at) VALUES (?,?,?,?,?,?)",
            (request_id, result.text, result.finish_reason, result.completion_tokens,
             json.dumps({**result.raw, "attempts": attempts}), now))
        conn.execute(
            "INSERT INTO telemetry(request_id, latency_s, ttfb_s, prefill_s, decode_s, peak_mem_mb, "
            "kv_bytes, notes_json) VALUES (?,?,?,?,?,?,?,?)",
            (request_id, result.latency_s, result.ttfb_s, result.prefill_s, result.decode_s,
             result.peak_mem_mb, result.kv_bytes, json.dumps(result.notes)))
        if result.prompt_tokens is not None:
            conn.execute("UPDATE requests SET prompt_tokens=? WHERE request_id=?",
                         (result.prompt_tokens, request_id))


def record_error(conn: sqlite3.Connection, request_id: int, error: EngineError,
                 attempts: int, seconds: float) -> None:
    """A request that failed after its retries is answered with the failure, so the run goes on."""
    finish = "timeout" if error.kind == "TIMEOUT" else "error"
    result = GenerationResult(text="", finish_reason=finish, latency_s=seconds,
                              raw={"error": str(error), "error_kind": error.kind},
                              notes={"failed_after_attempts": attempts})
    record_result(conn, request_id, result, attempts)
