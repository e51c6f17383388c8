"""The sweep's progress bar, shared by the in-process and the Ray executors."""

from __future__ import annotations

import sqlite3

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kv_transition.policy.spec import Setting


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

