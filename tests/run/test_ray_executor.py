"""`run.executor: ray` on a real local Ray cluster (2 CPUs): same answers as the local
executor, a killed actor's shard redone, a shard that keeps failing recorded, a killed driver
resumed. One cluster for the module; the fixture shuts it down (and its processes) even when
a test fails."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from kv_transition import paths, pipeline
from kv_transition.cli import app
from kv_transition.run.grid import plan_grid, plan_groups, work_left
from kv_transition.run.ray_executor import run_ray
from kv_transition.settings import load_settings

# 6 examples x (full, snapkv@0.5, streamingllm@0.5): one shared-prefill group, 18 requests
RAY = ["--set", "run.executor=ray", "--set", "run.ray.num_actors=2",
       "--set", "run.ray.shard_size=2"]


def _children() -> set[int]:
    """Pids of this process's children: the daemons `ray.init` starts for a local cluster."""
    me, pids = str(os.getpid()), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                pids.add(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return pids


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster():
    """A local cluster with the machine's two CPUs. Ray gives its node 30 s to start, which a
    heavily loaded machine can miss, so a start is tried three times; whatever it leaves
    behind is killed, on success or failure."""
    before = _children()
    try:
        for attempt in range(3):
            try:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                break
            except Exception:  # noqa: BLE001 - Ray raises a bare Exception on a slow start
                ray.shutdown()
                _kill(_children() - before)
                if attempt == 2:
                    raise
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        _kill(_children() - before)


def cli(*args):
    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result.output


def answers(home, exp):
    conn = sqlite3.connect(home / "runs" / exp / "kv_transition.sqlite")
    return conn.execute(
        "SELECT u.kv_policy, u.kv_budget, r.entry_id, s.text, s.finish_reason, t.kv_bytes, "
        "c.acc, c.f1 FROM responses s JOIN requests r USING(request_id) "
        "JOIN runs u USING(run_id) JOIN telemetry t USING(request_id) "
        "JOIN scores c USING(request_id) ORDER BY 1, 2, 3").fetchall()


def once_each(home, exp):
    """Every (run, entry) answered exactly once."""
    conn = sqlite3.connect(home / "runs" / exp / "kv_transition.sqlite")
    per_pair = conn.execute(
        "SELECT r.run_id, r.entry_id, COUNT(s.response_id) FROM requests r "
        "LEFT JOIN responses s USING(request_id) GROUP BY 1, 2").fetchall()
    leases = conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
    return len(per_pair) == 18 and all(n == 1 for *_, n in per_pair) and leases == 0


def ray_run(home, config, exp, on_submit, *overrides):
    """The Ray executor in this process, with a hook that sees every shard submitted."""
    settings = load_settings(config, ["run.executor=ray", "run.ray.num_actors=2",
                                      f"output.exp_group_id={exp}", *overrides])
    exp_obj = pipeline.Experiment(settings, home)
    conn = exp_obj.connect(must_exist=True)
    ds_id = pipeline.current_dataset(conn, exp_obj)
    left = work_left(conn, settings, ds_id, plan_grid(settings))
    groups = plan_groups(settings, plan_grid(settings), left)
    return run_ray(conn, settings, ds_id, groups, sum(left.values()),
                   paths.models_dir(home), show_progress=False, on_submit=on_submit)


def test_ray_matches_local_redoes_a_killed_shard_and_records_one_that_keeps_failing(
        home, tiny_config, cluster):
    """One Ray run (to keep CI short): the first shard's actor is SIGKILLed once (the shard is
    redone on a replacement), every actor given the last example is SIGKILLed (after two
    tries it is recorded as failed and the run goes on); everything else matches local."""
    for exp in ("local", "ray"):
        cli("prepare", "-c", tiny_config, "--set", f"output.exp_group_id={exp}")
    cli("run", "-c", tiny_config, "--no-progress", "--set", "output.exp_group_id=local")
    conn = sqlite3.connect(home / "runs" / "ray" / "kv_transition.sqlite")
    doomed = conn.execute("SELECT MAX(entry_id) FROM manifest_entries").fetchone()[0]
    kills = []

    def hook(driver, slot, shard):
        entry = shard.tasks[0].entry_id
        if entry == doomed or not kills:
            kills.append(entry)
            os.kill(driver.pool.pid(slot), signal.SIGKILL)
    done = ray_run(home, tiny_config, "ray", hook, "run.ray.shard_size=1",
                   "run.ray.max_shard_attempts=2")
    assert done == 18 and kills[1:].count(doomed) == 2 and kills[0] != doomed
    for exp in ("local", "ray"):
        cli("score", "-c", tiny_config, "--set", f"output.exp_group_id={exp}")
    assert once_each(home, "ray")
    local, distributed = answers(home, "local"), answers(home, "ray")
    assert len(local) == len(distributed) == 18
    assert [r for r in local if r[2] != doomed] == [r for r in distributed if r[2] != doomed]
    assert all(r[4] != "error" for r in distributed if r[2] != doomed)
    failed = conn.execute(
        "SELECT r.entry_id, s.finish_reason, s.raw_json FROM responses s "
        "JOIN requests r USING(request_id) WHERE r.entry_id=?", (doomed,)).fetchall()
    assert len(failed) == 3
    assert all(f == "error" and "shard failed 2 times" in raw for _, f, raw in failed)
    # an actor checked each compressing policy's integration before any request ran
    checked = conn.execute("SELECT kv_policy, passed FROM integrity_checks").fetchall()
    assert sorted(checked) == [("snapkv", 1), ("streamingllm", 1)]


def test_killed_ray_driver_resumes(home, tiny_config, cluster):
    cli("prepare", "-c", tiny_config)
    path = home / "runs" / "tiny" / "kv_transition.sqlite"
    cmd = [sys.executable, "-m", "kv_transition", "run", "-c", str(tiny_config), "--no-progress",
           *RAY, "--set", f"run.ray.address={cluster}", "--set", "decoding.max_tokens=12"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = _wait_for_answers(path, proc, at_least=2)
    finally:
        proc.kill()
        proc.wait()
    before = sqlite3.connect(path).execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert 0 < before < 18, "the driver finished before it could be killed"
    out = cli("run", "-c", tiny_config, "--no-progress", *RAY, "--set",
              f"run.ray.address={cluster}", "--set", "decoding.max_tokens=12")
    assert f"answered {18 - before} requests" in out
    assert once_each(home, "tiny")


def _wait_for_answers(path, proc, at_least: int) -> int:
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            n = sqlite3.connect(path).execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            if n >= at_least:
                return n
        time.sleep(0.05)
    return 0


def _fake_server_module():
    import importlib.util

    from kvt_testkit import REPO

    path = REPO / "tests" / "engines" / "fake_openai_server.py"
    spec = importlib.util.spec_from_file_location("fake_openai_server_for_ray", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_openai_actors_each_send_to_their_own_server(home, tmp_path, cluster):
    """Data-parallel servers: actor i talks to run.ray.base_urls[i]; every request once."""
    from kvt_testkit import write_config

    fake = _fake_server_module()
    servers = [fake.FakeOpenAIServer().start() for _ in range(2)]
    try:
        urls = [srv.base_url for srv in servers]
        cfg = write_config(tmp_path / "oa.yaml", kv={"policies": ["snapkv"], "budgets": [1.0]},
                           engine={"kind": "openai", "request": {"max_retries": 0}},
                           run={"executor": "ray", "ray": {"base_urls": urls}})
        cli("prepare", "-c", cfg)
        ray_run(home, cfg, "tiny", None, "run.ray.shard_size=1")
        # each actor's one warm-up request (a filler context) aside
        posts = [sum(s.method == "POST" and "the the the" not in json.dumps(s.body)
                     for s in srv.seen) for srv in servers]
    finally:
        for srv in servers:
            srv.stop()
    assert all(n > 0 for n in posts) and sum(posts) == 6, posts
    conn = sqlite3.connect(home / "runs" / "tiny" / "kv_transition.sqlite")
    texts = conn.execute("SELECT s.text, u.base_url FROM responses s JOIN requests r "
                         "USING(request_id) JOIN runs u USING(run_id)").fetchall()
    assert len(texts) == 6 and all(t == "Paris" for t, _ in texts)
    assert texts[0][1] == f"{servers[0].base_url},{servers[1].base_url}"
