"""The grid of a sweep: its settings, their runs in the database, and the work left.

One builder of the grid for every tool (the run, the perplexity canary, the novelty probes):
the full-cache baseline first, then every policy at every budget.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from kv_transition.db.connect import transaction
from kv_transition.engines.endpoints import resolve_base_url
from kv_transition.policy.spec import BASELINE_POLICY, Setting
from kv_transition.run.runner import ensure_requests
from kv_transition.settings import Settings


def plan_grid(settings: Settings) -> list[Setting]:
    """Baseline first (paired comparisons need it), then every policy at every budget < 1."""
    grid = [Setting(BASELINE_POLICY, 1.0)]
    for policy in settings.kv.all_policies():
        if policy == BASELINE_POLICY:
            continue
        grid += [Setting(policy, b) for b in settings.kv.budgets if b < 1.0]
        # budgets in tokens ride in the same column; values above 1 are token counts
        grid += [Setting(policy, float(t)) for t in settings.kv.budget_tokens]
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
        # data-parallel servers under Ray each serve every setting: the run names them all
        base_url = ",".join(settings.run.ray.base_urls) or \
            resolve_base_url(settings.engine, policy, budget)
    with transaction(conn):
        # another worker may create the same run first: its row stands
        conn.execute(
            "INSERT INTO runs(exp_group_id, dataset_id, kv_policy, kv_budget, engine_name, base_url, "
            "model_name, query_aware, created_at) VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(exp_group_id, dataset_id, kv_policy, kv_budget) DO NOTHING",
            (settings.output.exp_group_id, ds_id, policy, budget, settings.engine.kind, base_url,
             _model_label(settings), int(settings.kv.query_aware),
             datetime.now(timezone.utc).isoformat()))
    return _run_id(conn, settings, ds_id, policy, budget)


def work_left(conn: sqlite3.Connection, settings: Settings, ds_id: str,
               grid: list[Setting]) -> dict[Setting, int]:
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


def plan_groups(settings: Settings, grid: list[Setting], left: dict) -> list[tuple[Setting, ...]]:
    """The claim units' settings: the group one shared prefill per example serves exactly (hf
    engine), then every other setting with work left on its own, in grid order."""
    shared = _shared_settings(settings, grid, left)
    return ([tuple(shared)] if shared else []) + \
        [(s,) for s in grid if left[s] and s not in shared]


def ensure_run(conn: sqlite3.Connection, settings: Settings, ds_id: str, policy: str,
               budget: float) -> int:
    run_id = _run_id(conn, settings, ds_id, policy, budget) or \
        _create_run(conn, settings, ds_id, policy, budget)
    ensure_requests(conn, run_id, ds_id, settings)
    return run_id


def _shared_settings(settings: Settings, grid: list[Setting], left: dict) -> list[Setting]:
    """Settings with work left that one prefill per example can serve exactly."""
    if not settings.kv.shared_prefill or settings.engine.kind != "hf":
        return []
    # imported only now: it imports torch, which an HTTP-only run never needs
    from kv_transition.engines.shared_prefill import can_share

    shared = [s for s in grid if left[s] and can_share(s[0])]
    return shared if len(shared) > 1 else []
