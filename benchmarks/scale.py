"""Scale: requests/s with 1 and 2 local workers and with Ray, and the single writer's ceiling.

Part 1 runs the same grid (builtin:tiny-random, 12 examples x 3 settings = 36 requests,
one shared-prefill group) as real `kv-transition run` processes: 1 worker, 2 workers on one
experiment, and `run.executor: ray` with 2 actors on a local Ray instance. Two rates: over the
wall clock of the command (process start, model load and Ray start included), and steady-state
(responses between the first and the last commit, from responses.created_at).

Part 2 measures how many answered requests one SQLite writer commits per second on this disk:
one commit per answer, one commit per 64 answers, and the local worker's full bookkeeping
(claim a lease, then record). That rate is the ceiling of the single-writer design: a sweep
whose engines together answer faster than this would wait on the database.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/scale.py [--skip-runs] [--n 3000]
        [--rows local1,local2,ray]
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from kvt_testkit import TINY_CONFIG  # noqa: E402

from kv_transition.db.connect import connect, transaction  # noqa: E402
from kv_transition.engines.base import GenerationResult  # noqa: E402
from kv_transition.run.leases import Claimer  # noqa: E402
from kv_transition.run.telemetry import record_batch, record_result  # noqa: E402

CONFIG = {**TINY_CONFIG, "dataset": {**TINY_CONFIG["dataset"], "n_per_bin": 6},
          "decoding": {"max_tokens": 8}}
RESULTS = Path(__file__).parent / "results"
RAY = ["--set", "run.executor=ray", "--set", "run.ray.num_actors=2",
       "--set", "run.ray.shard_size=2"]


def _cli(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kv_transition", "--home", str(home), *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sweep_rate(home: Path, cfg: Path, exp: str, workers: int, extra: list[str]) -> dict:
    """Prepare ``exp``, then time ``workers`` concurrent `run` processes until all exit."""
    subprocess.run(_cli(home, "prepare", "-c", str(cfg), "--set", f"output.exp_group_id={exp}"),
                   check=True, env=_env(), capture_output=True)
    cmd = _cli(home, "run", "-c", str(cfg), "--no-progress", "--set",
               f"output.exp_group_id={exp}", *extra)
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise SystemExit(f"{exp}: a worker failed:\n{errors}")
    conn = sqlite3.connect(home / "runs" / exp / "kv_transition.sqlite")
    stamps = sorted(datetime.fromisoformat(t) for (t,) in
                    conn.execute("SELECT created_at FROM responses"))
    span = (stamps[-1] - stamps[0]).total_seconds()
    return {"n": len(stamps), "wall": wall, "rate_wall": len(stamps) / wall,
            "rate_steady": (len(stamps) - 1) / span if span > 0 else float("nan")}


def _start_ray() -> str:
    """A local Ray instance for the driver to join. Ray gives a node 30 s to start, which a
    loaded machine can miss, so it is tried three times."""
    import ray

    for attempt in range(3):
        try:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            return ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception on a slow start
            ray.shutdown()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _stop_ray() -> None:
    import ray

    ray.shutdown()


def _pending_db(path: Path, n: int) -> tuple[sqlite3.Connection, int]:
    """An experiment with one run of ``n`` unanswered requests (rows only, no model)."""
    conn = connect(path)
    now = datetime.now().isoformat()
    with transaction(conn):
        conn.execute("INSERT INTO experiments VALUES ('bench', ?, '{}', NULL, NULL)", (now,))
        conn.execute("INSERT INTO datasets(dataset_id, name, task, created_at) "
                     "VALUES ('ds', 'synthetic', 'mix', ?)", (now,))
        conn.executemany("INSERT INTO examples VALUES (?, 'ds', 'q', 'ctx', '[]', '{}', 100)",
                         [(f"e{i}",) for i in range(n)])
        conn.executemany("INSERT INTO manifest_entries(entry_id, dataset_id, example_id, bin_idx) "
                         "VALUES (?, 'ds', ?, 0)", [(i + 1, f"e{i}") for i in range(n)])
        run_id = conn.execute(
            "INSERT INTO runs(exp_group_id, dataset_id, kv_policy, kv_budget, engine_name, "
            "model_name, created_at) VALUES ('bench', 'ds', 'full', 1.0, 'hf', 'm', ?)",
            (now,)).lastrowid
        conn.executemany("INSERT INTO requests(run_id, entry_id, prompt_json, max_tokens, "
                         "temperature) VALUES (?, ?, '{}', 8, 0)",
                         [(run_id, i + 1) for i in range(n)])
    return conn, run_id


# an answer the size of a real one: a short text and the raw/notes JSON the engines store
ANSWER = GenerationResult(text="the answer is 42", finish_reason="stop", prompt_tokens=512,
                          completion_tokens=8, latency_s=0.1, ttfb_s=0.02, prefill_s=0.02,
                          decode_s=0.08, peak_mem_mb=100.0, kv_bytes=1 << 20,
                          raw={"engine": "hf", "tokens": list(range(8))},
                          notes={"shared_prefill": True, "kv_scope": "cache"})


def _timed(fn, n: int) -> tuple[float, float]:
    """(answers per wall second, per CPU second of this process): on a loaded machine the
    second says what the writer itself costs, the first what it got."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def writer_rates(tmp: Path, n: int) -> dict[str, tuple[float, float]]:
    rates = {}
    conn, _ = _pending_db(tmp / "one.sqlite", n)

    def one_each():
        for rid in range(1, n + 1):
            record_result(conn, rid, ANSWER, 1)
    rates["one commit per answer"] = _timed(one_each, n)
    batch_conn, _ = _pending_db(tmp / "batch.sqlite", n)

    def batched():
        for first in range(1, n + 1, 64):
            last = min(first + 64, n + 1)
            record_batch(batch_conn, [(rid, ANSWER, 1) for rid in range(first, last)])
    rates["one commit per 64 answers"] = _timed(batched, n)
    claim_conn, run_id = _pending_db(tmp / "claim.sqlite", n)
    claimer = Claimer(claim_conn, 300)

    def claimed():
        while claims := claimer.claim([run_id], 1):
            record_result(claim_conn, claims[0][0], ANSWER, 1)
    rates["claim a lease + commit (local worker)"] = _timed(claimed, n)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="answers written in part 2")
    ap.add_argument("--skip-runs", action="store_true", help="part 2 only")
    ap.add_argument("--rows", default="local1,local2,ray", help="part 1 rows to run")
    args = ap.parse_args()
    out = [f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
           f"{os.getloadavg()[0]:.1f} at start", ""]
    emit = lambda line: (out.append(line), print(line, flush=True))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        if not args.skip_runs:
            cfg = home / "scale.yaml"
            cfg.write_text(yaml.safe_dump(CONFIG))
            emit("| executor | processes | requests | wall s | req/s (wall) | req/s (steady) |")
            emit("|---|---:|---:|---:|---:|---:|")
            rows = {"local1": ("local", 1, []), "local2": ("local", 2, []),
                    "ray": ("ray, 2 actors", 1, RAY)}
            for key in args.rows.split(","):
                name, workers, extra = rows[key]
                if extra:
                    extra = [*extra, "--set", f"run.ray.address={_start_ray()}"]
                r = sweep_rate(home, cfg, key, workers, extra)
                emit(f"| {name} | {workers} | {r['n']} | {r['wall']:.1f} | "
                     f"{r['rate_wall']:.2f} | {r['rate_steady']:.2f} |")
            _stop_ray()
            emit("")
            emit("(ray: the local Ray instance is started before the clock starts; its actors "
                 "start within it)")
            emit("")
        emit(f"| single SQLite writer (WAL, synchronous=NORMAL), {args.n} answers "
             "| answers/s (wall) | answers per CPU second |")
        emit("|---|---:|---:|")
        for name, (wall, cpu) in writer_rates(home, args.n).items():
            emit(f"| {name} | {wall:,.0f} | {cpu:,.0f} |")
    RESULTS.mkdir(exist_ok=True)
    name = "scale_writer.md" if args.skip_runs else f"scale_{args.rows.replace(',', '_')}.md"
    (RESULTS / name).write_text(
        "\n".join(out) + "\n")


if __name__ == "__main__":
    main()
