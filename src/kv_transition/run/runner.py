"""Answer claimed requests: build the engine's work from rows, compute it, record it.

Computing is kept apart from recording so the same code answers in this process (the local
executor) and on a Ray actor, whose answers the driver records (run/ray_executor.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Iterator

from kv_transition.data import prompt as prompt_tpl
from kv_transition.db.connect import transaction
from kv_transition.engines.base import EngineError, GenerationRequest, GenerationResult
from kv_transition.engines.retries import call_with_retries
from kv_transition.policy.spec import Setting
from kv_transition.run.telemetry import failure_result, record_batch
from kv_transition.settings import RequestConfig, Settings



@dataclass
class EntryTask:
    """One manifest entry's pending requests under one group of settings.

    ``shared``: one prefill of the context answers every setting in ``rows``
    (engines/shared_prefill.py); otherwise ``rows`` holds one request of one setting.
    """

    entry_id: int
    request: GenerationRequest
    rows: list[tuple[int, Setting]]  # (request_id, setting)
    shared: bool


@dataclass
class Answer:
    request_id: int
    result: GenerationResult
    attempts: int


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


def request_rows(conn: sqlite3.Connection, request_ids: list[int]) -> list[sqlite3.Row]:
    """What an engine needs to answer these requests, in request order."""
    marks = ",".join("?" * len(request_ids))
    return conn.execute(
        "SELECT r.request_id, r.run_id, r.entry_id, r.max_tokens, r.temperature, e.context, "
        "e.question, e.meta_json "
        "FROM requests r JOIN manifest_entries m ON m.entry_id = r.entry_id "
        "JOIN examples e ON e.dataset_id = m.dataset_id AND e.example_id = m.example_id "
        f"WHERE r.request_id IN ({marks}) ORDER BY r.request_id", request_ids).fetchall()


def _request_for(row: sqlite3.Row, settings: Settings, policy: str,
                 budget: float) -> GenerationRequest:
    meta = json.loads(row["meta_json"])
    # the seed depends on the entry only: every setting of an entry, and every worker, uses it
    return GenerationRequest(
        context=row["context"], question=row["question"], max_tokens=row["max_tokens"],
        temperature=row["temperature"], policy=policy, budget=budget,
        query_aware=settings.kv.query_aware, answer_prefix=meta.get("answer_prefix", ""),
        seed=settings.decoding.seed + row["entry_id"], context_key=meta.get("cluster"))


def entry_tasks(conn: sqlite3.Connection, claims: list[list[int]], setting_of: dict[int, Setting],
                settings: Settings, shared: bool) -> list[EntryTask]:
    """Tasks for claimed entries (request ids per entry); ``setting_of`` maps run_id -> setting."""
    tasks = []
    for ids in claims:
        rows = request_rows(conn, ids)
        if shared:
            request = _request_for(rows[0], settings, "full", 1.0)
            tasks.append(EntryTask(rows[0]["entry_id"], request,
                                   [(r["request_id"], setting_of[r["run_id"]]) for r in rows],
                                   True))
            continue
        for row in rows:
            setting = setting_of[row["run_id"]]
            tasks.append(EntryTask(row["entry_id"], _request_for(row, settings, *setting),
                                   [(row["request_id"], setting)], False))
    return tasks


def compute(engine, task: EntryTask, retry: RequestConfig) -> list[Answer]:
    """Answer one task; an engine failure after its retries becomes a failed answer."""
    start = time.perf_counter()
    try:
        if task.shared:
            # lazy: imports torch, which an HTTP-only run never needs
            from kv_transition.engines.shared_prefill import generate_settings

            group = [setting for _, setting in task.rows]
            results, attempts = call_with_retries(
                lambda: generate_settings(engine, task.request, group),
                max_retries=retry.max_retries, backoff_s=retry.backoff_s)
            return [Answer(rid, results[setting], attempts) for rid, setting in task.rows]
        result, attempts = call_with_retries(
            lambda: engine.generate(task.request), max_retries=retry.max_retries,
            backoff_s=retry.backoff_s)
        return [Answer(task.rows[0][0], result, attempts)]
    except EngineError as exc:
        attempts = getattr(exc, "attempts", 1)
        failed = failure_result(exc, attempts, time.perf_counter() - start)
        return [Answer(rid, failed, attempts) for rid, _ in task.rows]


def compute_many(engine, tasks: list[EntryTask]) -> Iterator[list[Answer]]:
    """A concurrent engine (openai, ``generate_many``) answers single-setting tasks in any
    order; each outcome is yielded as it completes so it can be committed at once."""
    for outcome in engine.generate_many([t.request for t in tasks]):
        rid = tasks[outcome.index].rows[0][0]
        result = outcome.result if outcome.error is None else failure_result(
            outcome.error, outcome.attempts, outcome.seconds)
        yield [Answer(rid, result, outcome.attempts)]


def compute_all(engine, tasks: list[EntryTask], retry: RequestConfig) -> Iterator[list[Answer]]:
    """Every task's answers, one task (or one concurrent outcome) at a time."""
    if hasattr(engine, "generate_many") and not any(t.shared for t in tasks):
        yield from compute_many(engine, tasks)
        return
    for task in tasks:
        yield compute(engine, task, retry)


def record(conn: sqlite3.Connection, answers: list[Answer]) -> int:
    """Commit one task's answers together; returns how many were new (a late duplicate is
    dropped)."""
    return record_batch(conn, [(a.request_id, a.result, a.attempts) for a in answers])
