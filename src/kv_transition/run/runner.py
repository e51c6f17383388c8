"""Run one setting (policy × budget): answer every manifest entry not yet answered."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Callable

from kv_transition.data import prompt as prompt_tpl
from kv_transition.db.connect import transaction
from kv_transition.engines.base import EngineError, GenerationRequest
from kv_transition.run.retries import call_with_retries
from kv_transition.run.telemetry import record_error, record_result
from kv_transition.settings import Settings


def ensure_requests(conn: sqlite3.Connection, run_id: int, ds_id: str, settings: Settings) -> None:
    """One request per manifest entry; INSERT OR IGNORE makes this safe to repeat."""
    rows = conn.execute(
        "SELECT m.entry_id, e.example_id, e.question, e.meta_json, e.token_len FROM manifest_entries m "
        "JOIN examples e USING(dataset_id, example_id) WHERE m.dataset_id=? ORDER BY m.entry_id",
        (ds_id,)).fetchall()
    with transaction(conn):
        for row in rows:
            meta = json.loads(row["meta_json"])
            prompt = {"template_version": prompt_tpl.PROMPT_TEMPLATE_VERSION,
                      "example_id": row["example_id"], "question": row["question"],
                      "answer_prefix": meta.get("answer_prefix", ""),
                      "query_aware": settings.kv.query_aware,
                      "context": "see examples.context"}
            conn.execute(
                "INSERT OR IGNORE INTO requests(run_id, entry_id, prompt_json, prompt_tokens, "
                "max_tokens, temperature) VALUES (?,?,?,?,?,?)",
                (run_id, row["entry_id"], json.dumps(prompt), row["token_len"],
                 settings.decoding.max_tokens, settings.decoding.temperature))


def pending_requests(conn: sqlite3.Connection, run_id: int) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT r.request_id, r.run_id, r.entry_id, r.max_tokens, r.temperature, e.context, "
        "e.question, e.meta_json "
        "FROM requests r JOIN manifest_entries m ON m.entry_id = r.entry_id "
        "JOIN examples e ON e.dataset_id = m.dataset_id AND e.example_id = m.example_id "
        "LEFT JOIN responses s ON s.request_id = r.request_id "
        "WHERE r.run_id=? AND s.request_id IS NULL ORDER BY r.request_id", (run_id,)).fetchall()


def _request_for(row: sqlite3.Row, settings: Settings, policy: str, budget: float,
                 seed_offset: int) -> GenerationRequest:
    meta = json.loads(row["meta_json"])
    return GenerationRequest(
        context=row["context"], question=row["question"], max_tokens=row["max_tokens"],
        temperature=row["temperature"], policy=policy, budget=budget,
        query_aware=settings.kv.query_aware, answer_prefix=meta.get("answer_prefix", ""),
        seed=settings.decoding.seed + seed_offset)


def pending_by_entry(conn: sqlite3.Connection, run_ids: list[int]) -> dict[int, list[sqlite3.Row]]:
    """Unanswered requests of several runs, grouped by manifest entry."""
    grouped: dict[int, list[sqlite3.Row]] = {}
    for run_id in run_ids:
        for row in pending_requests(conn, run_id):
            grouped.setdefault(row["entry_id"], []).append(row)
    return grouped


def run_shared(conn: sqlite3.Connection, engine, runs: dict[tuple[str, float], int],
               settings: Settings, on_done: Callable[[], None] = lambda: None) -> int:
    """Answer every pending (setting, entry) with one prefill per entry (engines/shared_prefill.py)."""
    from kv_transition.engines.shared_prefill import generate_settings

    setting_of = {run_id: setting for setting, run_id in runs.items()}
    done = 0
    req_cfg = settings.engine.request
    for rows in pending_by_entry(conn, list(runs.values())).values():
        group = [setting_of[row["run_id"]] for row in rows]
        # the same seed for every setting of an entry, as separate runs of it would use
        request = _request_for(rows[0], settings, "full", 1.0, rows[0]["entry_id"])
        start = time.perf_counter()
        try:
            results, attempts = call_with_retries(
                lambda: generate_settings(engine, request, group),
                max_retries=req_cfg.max_retries, backoff_s=req_cfg.backoff_s)
            for row, setting in zip(rows, group):
                record_result(conn, row["request_id"], results[setting], attempts)
        except EngineError as exc:
            for row in rows:
                record_error(conn, row["request_id"], exc, getattr(exc, "attempts", 1),
                             time.perf_counter() - start)
        done += len(rows)
        for _ in rows:
            on_done()
    return done


def run_setting(conn: sqlite3.Connection, engine, run_id: int, policy: str, budget: float,
                settings: Settings, on_done: Callable[[], None] = lambda: None) -> int:
    """Answer the run's pending requests; each answer is committed as soon as it arrives."""
    if hasattr(engine, "generate_many"):  # a concurrent engine (openai): answers in any order
        return _run_concurrent(conn, engine, run_id, policy, budget, settings, on_done)
    done = 0
    req_cfg = settings.engine.request
    for row in pending_requests(conn, run_id):
        request = _request_for(row, settings, policy, budget, row["entry_id"])
        start = time.perf_counter()
        try:
            result, attempts = call_with_retries(
                lambda: engine.generate(request), max_retries=req_cfg.max_retries,
                backoff_s=req_cfg.backoff_s)
            record_result(conn, row["request_id"], result, attempts)
        except EngineError as exc:
            record_error(conn, row["request_id"], exc, getattr(exc, "attempts", 1),
                         time.perf_counter() - start)
        done += 1
        on_done()
    return done


def _run_concurrent(conn: sqlite3.Connection, engine, run_id: int, policy: str, budget: float,
                    settings: Settings, on_done: Callable[[], None]) -> int:
    """Each request goes to the engine once (it retries inside); each outcome is committed as
    it completes, so killing the run loses nothing answered and a rerun sends only the rest."""
    rows = pending_requests(conn, run_id)
    requests = [_request_for(row, settings, policy, budget, row["entry_id"]) for row in rows]
    done = 0
    for outcome in engine.generate_many(requests):
        request_id = rows[outcome.index]["request_id"]
        if outcome.error is None:
            record_result(conn, request_id, outcome.result, outcome.attempts)
        else:
            record_error(conn, request_id, outcome.error, outcome.attempts, outcome.seconds)
        done += 1
        on_done()
    return done
