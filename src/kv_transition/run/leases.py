"""Leases: many workers share one experiment's pending requests without computing one twice.

A worker claims the pending requests of a few manifest entries under one group of settings
(the runs one shared prefill serves, or a single run) in one ``BEGIN IMMEDIATE`` transaction,
so two workers can never claim the same request. The claim is a row per request in ``leases``
with an expiry; the worker's heartbeat thread pushes the expiry forward while it lives, and
recording the answer deletes the row (run/telemetry.py). A worker killed with SIGKILL stops
renewing, so its claims expire and return to the pool. A dead worker on this host is noticed
at once (its pid is gone) rather than after the expiry.

An entry is claimed whole or not at all: if any of its pending requests in the group is held
by another live worker, the entry is skipped, which keeps one example's settings on one
prefill.
"""

from __future__ import annotations

import itertools
import os
import socket
import sqlite3
import threading
import time
import uuid
from typing import Callable

from kv_transition.db.connect import transaction

# How often a worker with nothing to claim looks again while others finish their claims.
POLL_S = 0.5


def new_worker_id() -> str:
    """host:pid:token; host and pid let a worker on the same host see that its owner died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _is_dead_here(worker: str) -> bool:
    """True only when ``worker`` ran on this host and its process is gone."""
    host, _, rest = worker.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def db_file(conn: sqlite3.Connection) -> str:
    return conn.execute("PRAGMA database_list").fetchone()["file"]


class Claimer:
    """One worker's claims on one experiment database."""

    def __init__(self, conn: sqlite3.Connection, lease_s: float, worker: str | None = None,
                 clock: Callable[[], float] = time.time):
        self.conn = conn
        self.lease_s = lease_s
        self.worker = worker or new_worker_id()
        self.clock = clock
        self._after: dict[tuple[int, ...], int] = {}  # last entry claimed, per group
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def claim(self, run_ids: list[int], n_entries: int) -> list[list[int]] | None:
        """Claim up to ``n_entries`` entries' pending requests of ``run_ids``.

        Returns request ids per claimed entry; [] when every pending request is held by a live
        worker (this one included); None when nothing of these runs is pending at all.
        """
        key = tuple(run_ids)
        now = self.clock()
        with transaction(self.conn):
            self._free_dead_workers()
            # first past the last entry this worker claimed (a sweep walks forward, so this
            # stays cheap); only when that finds nothing, from the start, where a dead
            # worker's expired claims may lie
            chosen, seen = self._scan(run_ids, self._after.get(key, 0), now, n_entries)
            if not chosen and self._after.get(key, 0):
                chosen, seen = self._scan(run_ids, 0, now, n_entries)
            if not seen:
                return None
            self.conn.executemany(
                "INSERT OR REPLACE INTO leases(request_id, worker, expires_at) VALUES (?,?,?)",
                [(rid, self.worker, now + self.lease_s) for _, ids in chosen for rid in ids])
        if chosen:
            self._after[key] = chosen[-1][0]
        return [ids for _, ids in chosen]

    def _scan(self, run_ids: list[int], after: int, now: float,
              n_entries: int) -> tuple[list[tuple[int, list[int]]], bool]:
        """(claimable (entry, request ids) in entry order, whether anything is pending)."""
        marks = ",".join("?" * len(run_ids))
        cursor = self.conn.execute(
            # in entry order straight from the index, so the walk stops after a few entries
            # instead of sorting every pending request first
            "SELECT r.entry_id, r.request_id, l.worker, l.expires_at "
            "FROM requests r INDEXED BY requests_by_entry "
            "LEFT JOIN responses s ON s.request_id = r.request_id "
            "LEFT JOIN leases l ON l.request_id = r.request_id "
            f"WHERE r.entry_id > ? AND r.run_id IN ({marks}) AND s.request_id IS NULL "
            "ORDER BY r.entry_id, r.run_id", (after, *run_ids))
        chosen, seen = [], False
        for entry_id, rows in itertools.groupby(cursor, key=lambda r: r[0]):
            seen = True
            rows = list(rows)
            # held by anyone alive (this worker too: it is computing it) -> not ours to take
            if any(worker is not None and expires > now for _, _, worker, expires in rows):
                continue
            chosen.append((entry_id, [rid for _, rid, _, _ in rows]))
            if len(chosen) == n_entries:
                break
        return chosen, seen

    def _free_dead_workers(self) -> None:
        others = [r[0] for r in self.conn.execute(
            "SELECT DISTINCT worker FROM leases WHERE worker != ?", (self.worker,))]
        dead = [w for w in others if _is_dead_here(w)]
        self.conn.executemany("DELETE FROM leases WHERE worker=?", [(w,) for w in dead])

    def release(self, request_ids: list[int] | None = None) -> None:
        """Give claims back (all of this worker's by default), e.g. when stopping early."""
        with transaction(self.conn):
            if request_ids is None:
                self.conn.execute("DELETE FROM leases WHERE worker=?", (self.worker,))
            else:
                self.conn.executemany("DELETE FROM leases WHERE worker=? AND request_id=?",
                                      [(self.worker, rid) for rid in request_ids])

    def renew(self, conn: sqlite3.Connection | None = None) -> None:
        conn = conn or self.conn
        with transaction(conn):
            conn.execute("UPDATE leases SET expires_at=? WHERE worker=?",
                         (self.clock() + self.lease_s, self.worker))

    def start_heartbeat(self) -> None:
        """Renew this worker's leases every lease_s/3 from a thread with its own connection
        (an engine may compute one example for longer than a lease)."""
        path = db_file(self.conn)
        self._beat = threading.Thread(target=self._heartbeat, args=(path,), daemon=True,
                                      name="lease-heartbeat")
        self._beat.start()

    def _heartbeat(self, path: str) -> None:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        try:
            while not self._stop.wait(self.lease_s / 3):
                try:
                    self.renew(conn)
                except sqlite3.OperationalError:  # busy past the timeout: try next beat
                    pass
        finally:
            conn.close()

    def close(self) -> None:
        """Stop renewing and free whatever this worker still holds."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self.release()

    def __enter__(self) -> "Claimer":
        self.start_heartbeat()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
