"""Leases on a real SQLite file: whole-entry claims, expiry, dead workers, late duplicates."""

import subprocess
import sys
import time

from kv_transition.engines.base import GenerationResult
from kv_transition.run.leases import Claimer
from kv_transition.run.telemetry import record_result
from kv_transition.settings import load_settings


def pending_db(dbh, tmp_path):
    """Two runs x 8 entries, nothing answered yet."""
    conn, run_ids = dbh.build_experiment(tmp_path / "x.sqlite")
    conn.execute("COMMIT") if conn.in_transaction else None
    for table in ("failures", "scores", "telemetry", "responses"):
        conn.execute(f"DELETE FROM {table}")
    return conn, sorted(run_ids.values())


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def entries(conn, claims):
    rows = [conn.execute("SELECT entry_id FROM requests WHERE request_id=?", (rid,)).fetchone()[0]
            for ids in claims for rid in ids]
    return sorted(set(rows))


def test_claims_are_whole_entries_and_disjoint(dbh, tmp_path):
    conn, runs = pending_db(dbh, tmp_path)
    a, b = Claimer(conn, 60, "hostA:1:a"), Claimer(conn, 60, "hostB:1:b")
    first, second = a.claim(runs, 3), b.claim(runs, 3)
    assert all(len(ids) == 2 for ids in first + second)  # both settings of each entry
    assert not set(entries(conn, first)) & set(entries(conn, second))
    assert len(entries(conn, first + second)) == 6
    assert len(a.claim(runs, 10)) == 2  # what is left; a's own live claims are not re-taken
    assert a.claim(runs, 10) == [] and b.claim(runs, 10) == []  # all held, some pending
    conn.execute("DELETE FROM leases")
    assert len(a.claim(runs, 100)) == 8


def test_an_expired_claim_returns_to_the_pool(dbh, tmp_path):
    conn, runs = pending_db(dbh, tmp_path)
    clock = Clock()
    dead = Claimer(conn, 30, "elsewhere:4242:x", clock=clock)
    taken = dead.claim(runs, 8)
    alive = Claimer(conn, 30, "here:1:y", clock=clock)
    clock.now += 29
    assert alive.claim(runs, 8) == []  # another host's worker: only the expiry frees it
    clock.now += 2
    assert alive.claim(runs, 8) == taken


def test_renewal_keeps_a_slow_workers_claim(dbh, tmp_path):
    conn, runs = pending_db(dbh, tmp_path)
    clock = Clock()
    slow = Claimer(conn, 30, "elsewhere:1:slow", clock=clock)
    slow.claim(runs, 8)
    clock.now += 25
    slow.renew()
    clock.now += 25
    assert Claimer(conn, 30, "here:1:y", clock=clock).claim(runs, 8) == []


def test_a_dead_worker_on_this_host_is_noticed_at_once(dbh, tmp_path):
    conn, runs = pending_db(dbh, tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a real process that has exited
    import socket

    gone = Claimer(conn, 3600, f"{socket.gethostname()}:{proc.pid}:z")
    taken = gone.claim(runs, 8)
    assert Claimer(conn, 3600).claim(runs, 8) == taken


def test_heartbeat_renews_and_close_releases(dbh, tmp_path):
    conn, runs = pending_db(dbh, tmp_path)
    with Claimer(conn, 0.3) as worker:
        worker.claim(runs, 2)
        first = conn.execute("SELECT MAX(expires_at) FROM leases").fetchone()[0]
        deadline = time.time() + 30  # a beat every 0.1 s; generous for a loaded machine
        while conn.execute("SELECT MIN(expires_at) FROM leases").fetchone()[0] <= first:
            assert time.time() < deadline, "the heartbeat never renewed the claim"
            time.sleep(0.05)
    assert conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0


def test_a_late_second_answer_is_dropped_not_a_crash(dbh, tmp_path):
    conn, runs = pending_db(dbh, tmp_path)
    rid = conn.execute("SELECT MIN(request_id) FROM requests").fetchone()[0]
    first = GenerationResult(text="first", finish_reason="stop")
    assert record_result(conn, rid, first, 1) is True
    assert record_result(conn, rid, GenerationResult(text="late", finish_reason="stop"), 1) is False
    texts = [r[0] for r in conn.execute("SELECT text FROM responses WHERE request_id=?", (rid,))]
    assert texts == ["first"]


def test_ray_executor_without_ray_names_the_field_and_the_fix(monkeypatch):
    import importlib.util

    from kv_transition.errors import BadInput

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    try:
        load_settings(None, ["run.executor=ray"])
    except BadInput as exc:
        assert "run.executor" in str(exc) and "pip install 'kv-transition[ray]'" in str(exc)
    else:
        raise AssertionError("run.executor: ray was accepted without Ray")
