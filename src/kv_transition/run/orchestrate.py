"""Run the grid: one run per setting, the full-cache baseline once, resumable, any number of
workers at once (leases), or on Ray actors (``run/ray_executor.py``)."""

from __future__ import annotations

import sqlite3
import time

from kv_transition.run.grid import ensure_run, plan_grid, plan_groups, work_left
from kv_transition.run.integrity import check_integrity, store_verdicts
from kv_transition.run.leases import POLL_S, Claimer
from kv_transition.run.progress import Bar, progress_bar
from kv_transition.run.ray_executor import run_ray
from kv_transition.run.runner import compute_all, entry_tasks, record
from kv_transition.settings import Settings


def run_grid(conn: sqlite3.Connection, settings: Settings, ds_id: str, engine_factory,
             show_progress: bool = True, on_start=lambda: None, models_root=None) -> int:
    """Answer everything not yet answered; returns how many requests were answered now.

    Any number of processes may run this on one experiment at once: they share the work
    through leases (run/leases.py). ``run.executor: ray`` hands it to Ray actors instead.
    """
    grid = plan_grid(settings)
    left = work_left(conn, settings, ds_id, grid)
    if not any(left.values()):
        return 0
    groups = plan_groups(settings, grid, left)
    if settings.run.executor == "ray":
        return run_ray(conn, settings, ds_id, groups, sum(left.values()), models_root,
                       show_progress, on_start)
    engine = engine_factory(grid)  # bad model / endpoint fails here, before any row is written
    try:
        verdicts = check_integrity(settings, engine, [s for s in grid if left[s]])
        on_start()  # records the experiment, which the verdicts refer to
        store_verdicts(conn, settings, verdicts)
        runs = {s: ensure_run(conn, settings, ds_id, *s) for group in groups for s in group}
        with Claimer(conn, settings.run.lease_s) as claimer, \
                progress_bar(show_progress) as progress:
            bar = Bar(progress, conn, list(runs.values()), sum(left.values()))
            return _work_through(conn, engine, claimer, groups, runs, settings, bar)
    finally:
        engine.close()


def _work_through(conn: sqlite3.Connection, engine, claimer: Claimer, groups: list, runs: dict,
                  settings: Settings, bar: "Bar") -> int:
    """Claim, answer, record until no group has anything pending; earlier groups first (the
    baseline leads, so paired comparisons can start early). Waits while other workers hold
    the last claims: if one of them dies, its claims come back and are answered here."""
    setting_of = {run_id: s for s, run_id in runs.items()}
    size = _claim_size(settings, engine)
    active, warm, done = list(groups), set(), 0
    while active:
        claimed = False
        for group in list(active):
            claims = claimer.claim([runs[s] for s in group], size)
            if claims is None:
                active.remove(group)
            elif claims:
                claimed = True
                if group not in warm:  # latency is only honest after a warm-up
                    engine.warmup(*group[-1])
                    warm.add(group)
                bar.describe(group)
                tasks = entry_tasks(conn, claims, setting_of, settings, shared=len(group) > 1)
                for answers in compute_all(engine, tasks, settings.engine.request):
                    done += record(conn, answers)
                    bar.advance(len(answers))
                break
        bar.refresh()
        if active and not claimed:
            time.sleep(POLL_S)
    return done


def _claim_size(settings: Settings, engine) -> int:
    """Entries per claim: one for an engine that answers one at a time (even sharing among
    workers); enough to keep a concurrent engine's requests in flight."""
    if hasattr(engine, "generate_many"):
        return 2 * settings.engine.concurrency
    return 1


