"""The grid: one run per (policy, budget), the full-cache baseline once, resumable."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kv_transition.db.connect import transaction
from kv_transition.kv.registry import BASELINE_POLICY
from kv_transition.run.runner import ensure_requests, run_setting, run_shared
from kv_transition.settings import Settings


def plan_grid(settings: Settings) -> list[tuple[str, float]]:
    """Baseline first (paired comparisons need it), then every policy at every budget < 1."""
    grid = [(BASELINE_POLICY, 1.0)]
    for policy in settings.kv.all_policies():
        if policy == BASELINE_POLICY:
            continue
        grid += [(policy, b) for b in settings.kv.budgets if b < 1.0]
    return grid


def _run_id(conn: sqlite3.Connection, settings: Settings, ds_id: str, policy: str,
            budget: float) -> int | None:
    row = conn.execute(
        "SELECT run_id FROM runs WHERE exp_group_id=? AND dataset_id=? AND kv_policy=? "
        "AND kv_budget=?", (settings.output.exp_group_id, ds_id, policy, budget)).fetchone()
    return row["run_id"] if row else None


def _model_label(settings: Settings) -> str:
    """What the runs table calls the model; systems mode names the shape, not a checkpoint."""
    model = settings.model
    return f"random:{model.shape}" if model.init == "random" else model.name


def _create_run(conn: sqlite3.Connection, settings: Settings, ds_id: str, policy: str,
                budget: float) -> int:
    base_url = None
    if settings.engine.kind == "openai":
        from kv_transition.engines.endpoints import resolve_base_url

        base_url = resolve_base_url(settings.engine, policy, budget)
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO runs(exp_group_id, dataset_id, kv_policy, kv_budget, engine_name, base_url, "
            "model_name, query_aware, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (settings.output.exp_group_id, ds_id, policy, budget, settings.engine.kind, base_url,
             _model_label(settings), int(settings.kv.query_aware),
             datetime.now(timezone.utc).isoformat()))
    return cur.lastrowid


def _work_left(conn: sqlite3.Connection, settings: Settings, ds_id: str,
               grid: list[tuple[str, float]]) -> dict[tuple[str, float], int]:
    n_entries = conn.execute("SELECT COUNT(*) FROM manifest_entries WHERE dataset_id=?",
                             (ds_id,)).fetchone()[0]
    left = {}
    for policy, budget in grid:
        run_id = _run_id(conn, settings, ds_id, policy, budget)
        answered = 0 if run_id is None else conn.execute(
            "SELECT COUNT(*) FROM requests r JOIN responses s USING(request_id) WHERE r.run_id=?",
            (run_id,)).fetchone()[0]
        left[(policy, budget)] = n_entries - answered
    return left


def run_grid(conn: sqlite3.Connection, settings: Settings, ds_id: str, engine_factory,
             show_progress: bool = True, on_start=lambda: None) -> int:
    """Answer everything not yet answered; returns how many requests were answered now."""
    grid = plan_grid(settings)
    left = _work_left(conn, settings, ds_id, grid)
    if not any(left.values()):
        return 0
    engine = engine_factory(grid)  # bad model / endpoint fails here, before any row is written
    on_start()
    done = 0
    try:
        with _progress(show_progress) as progress:
            task = progress.add_task("", total=sum(left.values()))
            advance = lambda: progress.advance(task)  # noqa: E731
            shared = _shared_settings(settings, engine, grid, left)
            if shared:
                runs = {s: _ensure_run(conn, settings, ds_id, *s) for s in shared}
                progress.update(task, description=f"shared prefill x{len(shared)}")
                engine.warmup(*shared[-1])
                done += run_shared(conn, engine, runs, settings, on_done=advance)
            for policy, budget in grid:
                if not left[(policy, budget)] or (policy, budget) in shared:
                    continue
                run_id = _ensure_run(conn, settings, ds_id, policy, budget)
                progress.update(task, description=f"{policy} @ {budget:g}")
                engine.warmup(policy, budget)
                done += run_setting(conn, engine, run_id, policy, budget, settings,
                                    on_done=advance)
    finally:
        engine.close()
    return done


def _ensure_run(conn: sqlite3.Connection, settings: Settings, ds_id: str, policy: str,
                budget: float) -> int:
    run_id = _run_id(conn, settings, ds_id, policy, budget) or \
        _create_run(conn, settings, ds_id, policy, budget)
    ensure_requests(conn, run_id, ds_id, settings)
    return run_id


def _shared_settings(settings: Settings, engine, grid: list[tuple[str, float]],
                     left: dict) -> list[tuple[str, float]]:
    """Settings with work left that one prefill per example can serve exactly."""
    if not settings.kv.shared_prefill or getattr(engine, "name", "") != "hf":
        return []
    # imported only now: it imports torch, which an HTTP-only run never needs
    from kv_transition.engines.shared_prefill import can_share

    shared = [s for s in grid if left[s] and can_share(s[0])]
    return shared if len(shared) > 1 else []


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled, transient=False)

