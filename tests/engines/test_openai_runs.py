"""Whole runs through the openai engine against a misbehaving server: every request ends up
answered or recorded with the right failure class, exactly once, even across a kill."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from kv_transition import pipeline
from kv_transition.settings import load_settings
from kvt_testkit import write_config

try:
    from .fake_openai_server import FakeOpenAIServer, Reply, error
except ImportError:
    from fake_openai_server import FakeOpenAIServer, Reply, error

N_REQUESTS = 12  # 2 bins x 6 examples, one setting (the full cache)


@pytest.fixture
def server():
    srv = FakeOpenAIServer().start()
    yield srv
    srv.stop()


def _config(tmp_path, server, **engine):
    engine = {"kind": "openai", "base_url": server.base_url, "concurrency": 4,
              "request": {"timeout_s": 1.0, "max_retries": 2, "backoff_s": 0.01}, **engine}
    return write_config(tmp_path / "oa.yaml", engine=engine,
                        dataset={"name": "synthetic", "task": "mix", "lengths": [96, 192],
                                 "n_per_bin": 6, "seed": 0},
                        kv={"policies": ["snapkv"], "budgets": [1.0]})


def _experiment(cfg, home):
    exp = pipeline.Experiment(load_settings(cfg), home)
    pipeline.prepare(exp)
    return exp


def _rows(exp):
    conn = sqlite3.connect(exp.db_path)
    conn.row_factory = sqlite3.Row
    return conn.execute(
        "SELECT r.request_id, r.entry_id, s.text, s.finish_reason, s.raw_json, f.failure_type "
        "FROM requests r LEFT JOIN responses s USING(request_id) "
        "LEFT JOIN failures f USING(request_id) ORDER BY r.entry_id").fetchall()


def _cut_json():
    first = json.dumps({"choices": [{"index": 0, "delta": {"content": "Par"}}]})
    return Reply(events=[first, '{"choices": [{"ind'])


# entry id (= the request's seed): replies in order, attempts expected, failure class expected
FAULTS = {
    1: ([error(500, "overloaded"), error(503, "warming up"), Reply()], 3, None),
    2: ([error(429, "slow down", {"Retry-After": "1"}), Reply()], 2, None),
    3: ([Reply(delay_s=0.3)], 1, None),  # a slow first byte, inside the deadline
    4: ([Reply(delay_s=3.0)] * 3, 3, "TIMEOUT"),  # a first byte that never comes in time
    5: ([Reply(text="Paris is big", cut_after=1)], 1, "ENGINE_ERROR"),  # connection dropped
    6: ([Reply(text="Paris is big", cut_after=1, cut_mode="eof")], 1, "ENGINE_ERROR"),
    7: ([_cut_json()], 1, "ENGINE_ERROR"),  # invalid JSON after a token
    8: ([Reply(cut_after=0), Reply()], 2, None),  # cut before any data: retried
    9: ([error(500, "down")] * 3, 3, "ENGINE_ERROR"),
    10: ([error(400, "bad request")], 1, "ENGINE_ERROR"),
}


# the same without streaming: one JSON body per answer
FAULTS_WHOLE = {
    **{k: FAULTS[k] for k in (1, 2, 3, 4, 9, 10)},
    5: ([Reply(body=b'{"choices": [{"message"')], 1, "ENGINE_ERROR"),  # invalid JSON
    6: ([Reply(body=b'{"object": "x"}')], 1, "ENGINE_ERROR"),  # JSON without choices
    7: ([Reply(cut_after=1)], 1, "ENGINE_ERROR"),  # the body cut midway
    8: ([Reply(body=b"", status=502), Reply()], 2, None),
}


@pytest.mark.parametrize("stream, faults", [(True, FAULTS), (False, FAULTS_WHOLE)],
                         ids=["stream", "whole"])
def test_fault_mix_is_answered_or_recorded_exactly_once(home, tmp_path, server, stream, faults):
    exp = _experiment(_config(tmp_path, server, stream=stream), home)
    for seed, (replies, _, _) in faults.items():
        server.by_seed[seed] = list(replies)
    assert pipeline.run(exp, show_progress=False) == N_REQUESTS
    pipeline.score(exp)
    rows = _rows(exp)
    assert len(rows) == N_REQUESTS and len({r["request_id"] for r in rows}) == N_REQUESTS
    for row in rows:
        _, attempts, failure = faults.get(row["entry_id"], ([], 1, None))
        assert row["finish_reason"] is not None, row["entry_id"]  # answered or recorded
        assert server.posts_for(row["entry_id"]) == attempts, row["entry_id"]  # no duplicates
        assert json.loads(row["raw_json"])["attempts"] == attempts
        assert row["failure_type"] == failure, (row["entry_id"], row["raw_json"])
        if failure is None:
            assert row["text"] == "Paris"
    assert server.max_in_flight <= 4


class _InterruptAfter:
    """Wraps the engine: Ctrl-C arrives after ``n`` answers have reached the runner."""

    def __init__(self, engine, n: int):
        self.engine, self.n, self.name = engine, n, engine.name

    def generate_many(self, requests):
        outcomes = self.engine.generate_many(requests)
        for i, outcome in enumerate(outcomes):
            if i == self.n:
                outcomes.close()
                raise KeyboardInterrupt
            yield outcome

    def warmup(self, policy, budget):
        self.engine.warmup(policy, budget)

    def close(self):
        self.engine.close()


def _answered(exp) -> list[tuple[int, int]]:
    conn = sqlite3.connect(exp.db_path)
    return conn.execute(
        "SELECT r.entry_id, COUNT(s.response_id) FROM requests r "
        "LEFT JOIN responses s USING(request_id) GROUP BY r.request_id").fetchall()


def test_interrupted_run_keeps_answers_and_resumes_without_duplicates(home, tmp_path, server,
                                                                       monkeypatch):
    from kv_transition.engines import factory

    exp = _experiment(_config(tmp_path, server), home)
    for seed in range(1, N_REQUESTS + 1):
        server.by_seed[seed] = [Reply(delay_s=0.1)]
    real = factory.make_engine
    monkeypatch.setattr(factory, "make_engine", lambda *a: _InterruptAfter(real(*a), 5))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(exp, show_progress=False)
    assert sum(n for _, n in _answered(exp)) == 5  # what reached the runner is kept
    monkeypatch.setattr(factory, "make_engine", real)
    assert pipeline.run(exp, show_progress=False) == N_REQUESTS - 5  # only the rest is sent
    assert [n for _, n in _answered(exp)] == [1] * N_REQUESTS


def test_killed_run_process_resumes_without_duplicates(home, tmp_path, server):
    cfg = _config(tmp_path, server, concurrency=2)
    exp = _experiment(cfg, home)
    for seed in range(1, N_REQUESTS + 1):
        server.by_seed[seed] = [Reply(text="Paris is big", chunk_delay_s=0.1)]
    proc = subprocess.Popen([sys.executable, "-m", "kv_transition", "run", "-c", str(cfg),
                             "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, answered = time.time() + 60, 0
    while time.time() < deadline and proc.poll() is None:
        if exp.db_path.is_file():
            answered = sum(n for _, n in _answered(exp))
            if answered >= 3:
                break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert 0 < answered < N_REQUESTS, "the run finished before it could be killed"
    kept = sum(n for _, n in _answered(exp))
    assert pipeline.run(exp, show_progress=False) == N_REQUESTS - kept
    assert [n for _, n in _answered(exp)] == [1] * N_REQUESTS
