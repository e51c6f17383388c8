"""Several `kv-transition run` workers on one experiment, one SIGKILLed at a random moment.

Each round copies a prepared experiment, starts the workers (real processes), waits until a
random number of responses is committed, SIGKILLs a worker that holds claims at that moment,
lets the others finish, scores, and checks: every (run, entry) answered exactly once, no
lease left behind, and answers and scores identical to one uninterrupted process.

    python benchmarks/kill_stress.py --rounds 10           # the issue's ten rounds
    python benchmarks/kill_stress.py --rounds 10 --workers 3 --seed 1

tests/run/test_workers.py runs the same rounds, fewer of them, in the test suite.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from kvt_testkit import TINY_CONFIG  # noqa: E402

# 12 examples x (full, snapkv@0.5, streamingllm@0.5): 36 requests in 12 claim units
CONFIG = {**TINY_CONFIG, "dataset": {**TINY_CONFIG["dataset"], "n_per_bin": 6},
          "decoding": {"max_tokens": 8}, "run": {"lease_s": 20.0}}

ANSWERS = ("SELECT u.kv_policy, u.kv_budget, r.entry_id, s.text, s.finish_reason, t.kv_bytes, "
           "c.acc, c.f1 FROM responses s JOIN requests r USING(request_id) "
           "JOIN runs u USING(run_id) JOIN telemetry t USING(request_id) "
           "JOIN scores c USING(request_id) ORDER BY 1, 2, 3")


@dataclass
class Round:
    killed_at: int  # responses committed when the worker was killed
    victim_held: int  # requests the victim held leases on when it died
    survivors_ok: bool  # every other worker exited 0
    pairs: int  # (run, entry) pairs
    duplicates: int
    missing: int
    leases_left: int
    identical: bool  # answers and scores == the single-process reference
    seconds: float

    @property
    def ok(self) -> bool:
        return (self.survivors_ok and not self.duplicates and not self.missing
                and not self.leases_left and self.identical)


def _cli(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kv_transition", "--home", str(home), *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _db(home: Path, exp: str) -> Path:
    return home / "runs" / exp / "kv_transition.sqlite"


def _phase(home: Path, cfg: Path, exp: str, phase: str) -> None:
    """One phase in this process: setup and scoring need no separate process."""
    from kv_transition import pipeline
    from kv_transition.settings import load_settings

    experiment = pipeline.Experiment(load_settings(cfg, [f"output.exp_group_id={exp}"]), home)
    if phase == "run":
        pipeline.run(experiment, show_progress=False)
    else:
        getattr(pipeline, phase)(experiment)


def setup(home: Path) -> Path:
    """Config, prepared experiment 'base' and the single-process reference 'ref' (scored)."""
    cfg = home / "stress.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    _phase(home, cfg, "base", "prepare")
    with sqlite3.connect(_db(home, "base")) as conn:  # everything in the main file: copyable
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copytree(home / "runs" / "base", home / "runs" / "ref")
    for phase in ("run", "score"):
        _phase(home, cfg, "ref", phase)
    return cfg


def _answered(path: Path) -> int:
    with sqlite3.connect(path, timeout=30) as conn:
        return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def _holders(path: Path) -> dict[int, int]:
    """pid -> requests it holds a lease on now."""
    with sqlite3.connect(path, timeout=30) as conn:
        rows = conn.execute("SELECT worker, COUNT(*) FROM leases WHERE expires_at > ? "
                            "GROUP BY worker", (time.time(),)).fetchall()
    return {int(w.split(":")[1]): n for w, n in rows}


def one_round(home: Path, cfg: Path, exp: str, rng: random.Random, workers: int = 3,
              total: int = 36, timeout_s: float = 900) -> Round:
    start = time.time()
    shutil.copytree(home / "runs" / "base", home / "runs" / exp)
    path = _db(home, exp)
    cmd = _cli(home, "run", "-c", str(cfg), "--no-progress", "--set", f"output.exp_group_id={exp}")
    logs = [open(home / f"{exp}.worker{i}.log", "wb") for i in range(workers)]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=log, stderr=log) for log in logs]
    try:
        killed_at, held, victim = _kill_one(path, procs, rng.randint(1, total - 1), rng,
                                            timeout_s)
        survivors_ok = all(p.wait(timeout=timeout_s) == 0 for p in procs if p is not victim)
    finally:
        for p in procs:  # never leave a worker behind, even when a check failed
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    _phase(home, cfg, exp, "score")
    return _check(home, exp, killed_at, held, survivors_ok, time.time() - start)


def _kill_one(path: Path, procs, target: int, rng: random.Random,
              timeout_s: float) -> tuple[int, int, subprocess.Popen | None]:
    """SIGKILL one worker once ``target`` responses are committed; prefer one holding claims."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(p.poll() is None for p in procs):
        answered = _answered(path)
        if answered >= target:
            break
        time.sleep(0.02)
    holders = _holders(path)
    alive = [p for p in procs if p.poll() is None]
    if not alive:  # all done before the target: nothing to kill this round
        return answered, 0, None
    busy = [p for p in alive if p.pid in holders]
    victim = rng.choice(busy or alive)
    victim.send_signal(signal.SIGKILL)
    victim.wait()  # reaped, so its pid is gone and the survivors take its claims at once
    return answered, holders.get(victim.pid, 0), victim


def _check(home: Path, exp: str, killed_at: int, held: int, survivors_ok: bool,
           seconds: float) -> Round:
    conn = sqlite3.connect(_db(home, exp))
    counts = [n for (n,) in conn.execute(
        "SELECT COUNT(s.response_id) FROM requests r LEFT JOIN responses s USING(request_id) "
        "GROUP BY r.run_id, r.entry_id")]
    leases = conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
    ref = sqlite3.connect(_db(home, "ref")).execute(ANSWERS).fetchall()
    return Round(killed_at, held, survivors_ok, len(counts), sum(n > 1 for n in counts),
                 sum(n == 0 for n in counts), leases, conn.execute(ANSWERS).fetchall() == ref,
                 seconds)


def table(rounds: list[Round]) -> str:
    head = ("| round | killed at (responses) | victim held | survivors exit 0 | pairs | "
            "duplicates | missing | leases left | identical to 1 process | s |\n"
            "|---:|---:|---:|:-:|---:|---:|---:|---:|:-:|---:|\n")
    rows = [f"| {i} | {r.killed_at} | {r.victim_held} | {'yes' if r.survivors_ok else 'NO'} | "
            f"{r.pairs} | {r.duplicates} | {r.missing} | {r.leases_left} | "
            f"{'yes' if r.identical else 'NO'} | {r.seconds:.0f} |"
            for i, r in enumerate(rounds, 1)]
    return head + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        cfg = setup(home)
        rounds = []
        for i in range(args.rounds):
            rounds.append(one_round(home, cfg, f"round{i}", rng, args.workers))
            print(table(rounds).splitlines()[-1], flush=True)
    text = f"{args.workers} workers, one SIGKILLed per round, seed {args.seed}\n\n{table(rounds)}\n"
    print("\n" + text)
    (Path(__file__).parent / "results" / "kill_stress.md").write_text(text)
    sys.exit(0 if all(r.ok for r in rounds) else 1)


if __name__ == "__main__":
    main()
