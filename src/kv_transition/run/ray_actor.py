"""The Ray actor: one model (or one server's client), answering shards of the grid.

It never touches the database: it yields answers, and the driver records them
(run/ray_executor.py). Imported by Ray on each worker node, so kv-transition must be
installed there too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from kv_transition.engines.factory import make_engine
from kv_transition.errors import BadInput
from kv_transition.policy.spec import Setting
from kv_transition.run.integrity import check_integrity
from kv_transition.run.runner import Answer, EntryTask, compute_all
from kv_transition.settings import Settings


def pinned_to(settings: Settings, base_url: str | None) -> Settings:
    """Settings whose openai engine sends every setting to ``base_url`` (one data-parallel
    server per actor); unchanged when there is none."""
    if base_url is None:
        return settings
    engine = settings.engine.model_copy(update={"base_url": base_url, "base_urls": {}})
    return settings.model_copy(update={"engine": engine})


def actor_base_url(base_urls: list[str], slot: int) -> str | None:
    return base_urls[slot % len(base_urls)] if base_urls else None


class SweepActor:
    def __init__(self, settings_data: dict, models_root: str | None, grid: list[Setting],
                 base_url: str | None):
        self.settings = pinned_to(Settings.model_validate(settings_data), base_url)
        self.warm: set[tuple[Setting, ...]] = set()
        self.engine, self.error = None, None
        try:
            self.engine = make_engine(self.settings, Path(models_root or "."), grid)
        except BadInput as exc:  # kept, so the driver can exit 2 with the message
            self.error = str(exc)

    def ready(self) -> tuple[int, str | None]:
        """(pid, bad-input message or None), once the model is loaded."""
        return os.getpid(), self.error

    def integrity(self, grid: list[Setting]) -> tuple[list, str | None]:
        """(verdicts, failure message or None) of the integrity check on this actor's model."""
        try:
            return check_integrity(self.settings, self.engine, grid), None
        except BadInput as exc:
            return [], str(exc)

    def answer(self, group: tuple[Setting, ...], tasks: list[EntryTask]) -> Iterator[list[Answer]]:
        """Yield each entry's answers as soon as they exist (a Ray streaming generator), so a
        dead actor loses only the entries it had not reported yet."""
        if self.engine is None:
            raise RuntimeError(f"actor has no engine: {self.error}")
        if group not in self.warm:  # latency is only honest after a warm-up
            self.engine.warmup(*group[-1])
            self.warm.add(group)
        yield from compute_all(self.engine, tasks, self.settings.engine.request)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
