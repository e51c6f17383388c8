"""`run.executor: ray`: shards of the grid on Ray actors; this process is the only writer.

A shard is a few examples under one group of settings (the shared-prefill group, or one
setting), claimed through leases like any local worker's claim, so a Ray driver and local
workers can even share one experiment. Actors stream each example's answers back and the
driver commits them at once: killing the driver loses only what was in flight, and a new
driver computes only what is missing. An actor that dies is replaced and its shard's
unanswered examples retried; after ``max_shard_attempts`` they are recorded as failed
requests and the run goes on.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from kv_transition.engines.base import EngineError
from kv_transition.errors import BadInput
from kv_transition.policy.spec import Setting
from kv_transition.run.integrity import store_verdicts
from kv_transition.run.leases import POLL_S, Claimer
from kv_transition.run.grid import ensure_run, plan_grid
from kv_transition.run.progress import Bar, progress_bar
from kv_transition.run.ray_actor import SweepActor, actor_base_url
from kv_transition.run.runner import EntryTask, entry_tasks, record
from kv_transition.run.telemetry import failure_result, record_result
from kv_transition.settings import RayConfig, Settings


@dataclass
class Shard:
    group: tuple[Setting, ...]
    tasks: list[EntryTask]
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    def drop_answered(self, request_ids: set[int]) -> None:
        self.tasks = [t for t in self.tasks if not {rid for rid, _ in t.rows} <= request_ids]


class ActorPool:
    """Slots of actors; a dead one is killed for good and a fresh one takes its slot."""

    def __init__(self, ray, settings: Settings, models_root, grid: list[Setting], n: int):
        cfg = settings.run.ray
        self.ray = ray
        self.remote = ray.remote(SweepActor).options(
            num_gpus=cfg.num_gpus, num_cpus=cfg.num_cpus, max_restarts=0, max_task_retries=0)
        self.args = (settings.model_dump(mode="json"), str(models_root) if models_root else None,
                     grid)
        self.base_urls = cfg.base_urls
        self.actors = [self._new(i) for i in range(n)]
        self.pids = self._wait_ready()

    def _new(self, slot: int):
        return self.remote.remote(*self.args, actor_base_url(self.base_urls, slot))

    def _wait_ready(self) -> list[int]:
        """Every model loaded; bad input (a missing model, an unreachable server) exits 2."""
        ready = self.ray.get([a.ready.remote() for a in self.actors])
        errors = [err for _, err in ready if err]
        if errors:
            raise BadInput(errors[0])
        return [pid for pid, _ in ready]

    def replace(self, slot: int) -> None:
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._new(slot)
        # asked now, so the answer comes before any shard this actor is given next
        self.pids[slot] = self.actors[slot].ready.remote()

    def pid(self, slot: int) -> int:
        """The actor's process id (tests kill it); waits for a new actor to load its model."""
        if not isinstance(self.pids[slot], int):
            self.pids[slot] = self.ray.get(self.pids[slot])[0]
        return self.pids[slot]

    def submit(self, slot: int, shard: Shard):
        return self.actors[slot].answer.options(num_returns="streaming").remote(
            shard.group, shard.tasks)

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.get(actor.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a dead actor has nothing to close
                pass
            self.ray.kill(actor, no_restart=True)


def run_ray(conn: sqlite3.Connection, settings: Settings, ds_id: str,
            groups: list[tuple[Setting, ...]], total: int, models_root,
            show_progress: bool = True, on_start: Callable[[], None] = lambda: None,
            on_submit=None) -> int:
    """Answer the ``total`` pending requests of ``groups`` on Ray actors; returns how many
    this driver recorded. ``on_submit(driver, slot, shard)``: a test's hook."""
    import ray

    started = _init(ray, settings.run.ray)
    pool = None
    try:
        n = _num_actors(ray, settings.run.ray, total)
        pool = ActorPool(ray, settings, models_root, plan_grid(settings), n)
        # one actor checks each policy's integration before any row is written
        verdicts, failure = ray.get(pool.actors[0].integrity.remote(
            [s for group in groups for s in group]))
        if failure:
            raise BadInput(failure)
        on_start()
        store_verdicts(conn, settings, verdicts)
        runs = {s: ensure_run(conn, settings, ds_id, *s) for group in groups for s in group}
        with Claimer(conn, settings.run.lease_s) as claimer, \
                progress_bar(show_progress) as progress:
            bar = Bar(progress, conn, list(runs.values()), total)
            bar.progress.update(bar.task, description=f"ray x{n} actors")
            driver = Driver(conn, settings, pool, claimer, groups, runs, bar, on_submit)
            return driver.run()
    finally:
        if pool is not None:
            pool.close()
        if started:
            ray.shutdown()


def _init(ray, cfg: RayConfig) -> bool:
    """Join the configured cluster or start a local one; True when this call started Ray."""
    if ray.is_initialized():
        return False
    ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False)
    return True


def _num_actors(ray, cfg: RayConfig, total: int) -> int:
    """The configured count, else what the cluster holds; never more than there is work."""
    if cfg.num_actors:
        n = cfg.num_actors
    elif cfg.num_gpus > 0:
        n = int(ray.cluster_resources().get("GPU", 0) // cfg.num_gpus)
    else:
        n = int(ray.cluster_resources().get("CPU", 1) // max(cfg.num_cpus, 1.0))
    return max(1, min(n, math.ceil(total / cfg.shard_size)))


class Driver:
    """Claims shards, keeps every actor busy, records answers as they stream in."""

    def __init__(self, conn, settings: Settings, pool: ActorPool, claimer: Claimer, groups,
                 runs: dict, bar: Bar, on_submit=None):
        self.conn, self.settings, self.pool, self.claimer = conn, settings, pool, claimer
        self.ray = pool.ray
        self.active = list(groups)
        self.runs = runs
        self.setting_of = {run_id: s for s, run_id in runs.items()}
        self.bar = bar
        self.on_submit = on_submit  # tests: kill an actor that holds a shard
        self.retry: deque[Shard] = deque()
        self.idle = list(range(len(pool.actors)))
        self.inflight: dict = {}  # streaming generator -> (slot, shard)
        self.done = 0
        self.replaced = 0

    def run(self) -> int:
        while True:
            self._fill()
            if not self.inflight:
                if not self.active and not self.retry:
                    return self.done
                time.sleep(POLL_S)  # other workers hold the rest; theirs return if they die
                continue
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
            for gen in ready:
                self._step(gen)
            self.bar.refresh()

    def _fill(self) -> None:
        while self.idle:
            shard = self.retry.popleft() if self.retry else self._claim()
            if shard is None:
                return
            slot = self.idle.pop()
            self.inflight[self.pool.submit(slot, shard)] = (slot, shard)
            if self.on_submit is not None:
                self.on_submit(self, slot, shard)

    def _claim(self) -> Shard | None:
        size = self.settings.run.ray.shard_size
        for group in list(self.active):
            claims = self.claimer.claim([self.runs[s] for s in group], size)
            if claims is None:
                self.active.remove(group)
            elif claims:
                tasks = entry_tasks(self.conn, claims, self.setting_of, self.settings,
                                    shared=len(group) > 1)
                return Shard(group, tasks)
        return None

    def _step(self, gen) -> None:
        slot, shard = self.inflight[gen]
        try:
            answers = self.ray.get(next(gen))
        except StopIteration:
            del self.inflight[gen]
            self.idle.append(slot)
            return
        except self.ray.exceptions.RayError as exc:  # the actor died, or its task raised
            del self.inflight[gen]
            self._failed(slot, shard, exc)
            return
        self.done += record(self.conn, answers)
        self.bar.advance(len(answers))
        shard.drop_answered({a.request_id for a in answers})

    def _failed(self, slot: int, shard: Shard, exc: Exception) -> None:
        self.pool.replace(slot)
        self.replaced += 1
        self.idle.append(slot)
        shard.attempts += 1
        shard.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        if not shard.tasks:
            return
        if shard.attempts < self.settings.run.ray.max_shard_attempts:
            self.retry.append(shard)
            return
        self._give_up(shard)

    def _give_up(self, shard: Shard) -> None:
        """Record the shard's unanswered requests as failed, so the run finishes."""
        error = EngineError(f"shard failed {shard.attempts} times on Ray actors; last: "
                            f"{shard.errors[-1]}", transient=False)
        result = failure_result(error, shard.attempts, 0.0)
        for task in shard.tasks:
            for rid, _ in task.rows:
                self.done += record_result(self.conn, rid, result, shard.attempts)
                self.bar.advance(1)
