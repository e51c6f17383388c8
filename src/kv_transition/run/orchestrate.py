"""The grid: one run per (policy, budget), the full-cache baseline once, resumable."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kv_transition.db.connect import transaction
from kv_transition.engines.endpoints import resolve_base_url
from kv_transition.policy.spec import BASELINE_POLICY
from kv_transition.run.integrity import check_integrity, store_verdicts
from kv_transition.run.leases import POLL_S, Claimer
from kv_transition.run.runner import Setting, compute_all, ensure_requests, entry_tasks, record
from kv_transition.settings import Settings


def plan_grid(settings: Settings) -> list[tuple[str, float]]:
    """Baseline first (paired comparisons need it), then every policy at every budget < 1."""
    grid = [(BASELINE_POLICY, 1.0)]
    for policy in settings.kv.all_policies():
        if policy == BASELINE_POLICY:
            continue
        grid += [(policy, b) for b in settings.kv.budgets if b < 1.0]
        # budgets in tokens ride in the same column; values above 1 are token counts
        grid += [(policy, float(t)) for t in settings.kv.budget_tokens]
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


def plan_groups(settings: Settings, grid: list[Setting], left: dict) -> list[tuple[Setting, ...]]:
    """The claim units' settings: the group one shared prefill per example serves exactly (hf
    engine), then every other setting with work left on its own, in grid order."""
    shared = _shared_settings(settings, grid, left)
    return ([tuple(shared)] if shared else []) + \
        [(s,) for s in grid if left[s] and s not in shared]


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
        # lazy: not for torch, for a cycle: ray_executor imports this module's grid and bar
        from kv_transition.run.ray_executor import run_ray

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


def describe(group: tuple[Setting, ...]) -> str:
    return f"shared prefill x{len(group)}" if len(group) > 1 else \
        f"{group[0][0]} @ {group[0][1]:g}"


class Bar:
    """One progress bar; with several workers it shows the experiment's progress, not just
    this worker's, by re-reading the answered count between claims."""

    def __init__(self, progress: Progress, conn: sqlite3.Connection, run_ids: list[int],
                 total: int):
        self.progress, self.conn, self.run_ids = progress, conn, run_ids
        self.base = self._answered()
        self.task = progress.add_task("", total=total)

    def _answered(self) -> int:
        marks = ",".join("?" * len(self.run_ids))
        return self.conn.execute(
            f"SELECT COUNT(*) FROM requests r JOIN responses s USING(request_id) "
            f"WHERE r.run_id IN ({marks})", self.run_ids).fetchone()[0]

    def describe(self, group: tuple[Setting, ...]) -> None:
        self.progress.update(self.task, description=describe(group))

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def refresh(self) -> None:
        self.progress.update(self.task, completed=self._answered() - self.base)


def progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled, transient=False)

