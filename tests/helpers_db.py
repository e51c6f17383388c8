"""Build a small experiment database by hand, through the real schema, for analysis/report tests.

tests/analysis/conftest.py and tests/report/conftest.py load it by file path and expose it as
fixtures, so no test needs sys.path changes or package ``__init__`` files.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from kv_transition.db.connect import connect

MIB = 2 ** 20
DATASET = "ds-synth"
NOW = "2026-01-01T00:00:00+00:00"


@dataclass
class Outcome:
    """What one request of one run produced."""

    acc: float
    pred: str = ""
    failure: str | None = None  # failure_type; the response then ends with finish_reason 'error'
    latency_s: float | None = 0.1
    kv_bytes: int | None = None
    peak_mem_mb: float | None = None
    mem_scope: str | None = None


Setting = tuple[str, float]  # (kv_policy, kv_budget)


def _o(acc, pred, **kw) -> Outcome:
    return Outcome(acc=acc, pred=pred, **kw)


def paired_scenario() -> dict[Setting, list[list[Outcome]]]:
    """Two bins x four entries; numbers the tests check by hand.

    full  bin0 acc 1,1,1,0  bin1 acc 1,1,0,0
    snapkv@0.5 bin0 acc 1,1,1,1 (delta +0.25, flip 1/4)
               bin1 acc 1,0,0,0 with entry 1 an engine error (delta -0.25, flip 1/4, fail 1/4)
    """
    full, snap = 2 * MIB, MIB
    return {
        ("full", 1.0): [
            [_o(1, "paris", latency_s=0.1, kv_bytes=full),
             _o(1, "blue cat", latency_s=0.2, kv_bytes=full),
             _o(1, "42", latency_s=0.3, kv_bytes=full),
             _o(0, "wrong", latency_s=0.4, kv_bytes=full)],
            [_o(1, "x y", kv_bytes=full), _o(1, "a b", kv_bytes=full),
             _o(0, "c", kv_bytes=full), _o(0, "d", kv_bytes=full)],
        ],
        ("snapkv", 0.5): [
            [_o(1, "paris", kv_bytes=snap), _o(1, "blue dog", kv_bytes=snap),
             _o(1, "42", kv_bytes=snap), _o(1, "right", kv_bytes=snap)],
            [_o(1, "x y", kv_bytes=snap), _o(0, "", failure="ENGINE_ERROR", kv_bytes=snap),
             _o(0, "c", kv_bytes=snap), _o(0, "e", kv_bytes=snap)],
        ],
    }


def _insert_dataset(conn: sqlite3.Connection, bins: list[tuple[int, int]],
                    n_per_bin: int) -> list[list[int]]:
    """Dataset, examples, bins and manifest entries; returns entry ids per bin."""
    conn.execute("INSERT INTO datasets (dataset_id, name, task, created_at) VALUES (?,?,?,?)",
                 (DATASET, "synthetic", "niah_single", NOW))
    entries = []
    for bin_idx, (tmin, tmax) in enumerate(bins):
        conn.execute("INSERT INTO bins (dataset_id, bin_idx, token_min, token_max, n_examples) "
                     "VALUES (?,?,?,?,?)", (DATASET, bin_idx, tmin, tmax, n_per_bin))
        ids = []
        for j in range(n_per_bin):
            ex = f"ex{bin_idx}_{j}"
            conn.execute(
                "INSERT INTO examples VALUES (?,?,?,?,?,?,?)",
                (ex, DATASET, "q?", f"context of {ex}", json.dumps(["a"]), "{}",
                 (tmin + tmax) // 2))
            cur = conn.execute("INSERT INTO manifest_entries (dataset_id, example_id, bin_idx) "
                               "VALUES (?,?,?)", (DATASET, ex, bin_idx))
            ids.append(cur.lastrowid)
        entries.append(ids)
    return entries


def _insert_request(conn: sqlite3.Connection, run_id: int, entry_id: int, out: Outcome) -> None:
    rid = conn.execute(
        "INSERT INTO requests (run_id, entry_id, prompt_json, prompt_tokens, max_tokens, "
        "temperature) VALUES (?,?,?,?,?,?)", (run_id, entry_id, "{}", 100, 16, 0.0)).lastrowid
    finish = "error" if out.failure else "stop"
    conn.execute("INSERT INTO responses (request_id, text, finish_reason, completion_tokens, "
                 "raw_json, created_at) VALUES (?,?,?,?,?,?)",
                 (rid, out.pred, finish, 2, "{}", NOW))
    notes = json.dumps({"peak_mem_scope": out.mem_scope} if out.mem_scope else {})
    conn.execute("INSERT INTO telemetry (request_id, latency_s, peak_mem_mb, kv_bytes, notes_json)"
                 " VALUES (?,?,?,?,?)", (rid, out.latency_s, out.peak_mem_mb, out.kv_bytes, notes))
    conn.execute("INSERT INTO scores VALUES (?,?,?,?,?,?,?)",
                 (rid, out.acc, out.acc, out.acc, "em", out.pred, "gold"))
    if out.failure:
        conn.execute("INSERT INTO failures VALUES (?,?,?)", (rid, out.failure, "boom"))


def build_experiment(
    path: Path, runs: dict[Setting, list[list[Outcome]]] | None = None,
    bins: list[tuple[int, int]] | None = None, exp_group_id: str = "exp",
    model_name: str = "tiny-test-model", config_yaml: str = "kv:\n  budgets: [1.0, 0.5]\n",
) -> tuple[sqlite3.Connection, dict[Setting, int]]:
    """Create the database at ``path``; returns the connection and run ids by setting."""
    runs = runs or paired_scenario()
    bins = bins or [(100, 200), (400, 1200)][:len(next(iter(runs.values())))]
    n_per_bin = len(next(iter(runs.values()))[0])
    conn = connect(path)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO experiments VALUES (?,?,?,?,?)",
                 (exp_group_id, NOW, config_yaml, "abc1234", None))
    entries = _insert_dataset(conn, bins, n_per_bin)
    run_ids = {}
    for (policy, budget), per_bin in runs.items():
        run_id = conn.execute(
            "INSERT INTO runs (exp_group_id, dataset_id, kv_policy, kv_budget, engine_name, "
            "model_name, created_at) VALUES (?,?,?,?,?,?,?)",
            (exp_group_id, DATASET, policy, budget, "hf", model_name, NOW)).lastrowid
        run_ids[(policy, budget)] = run_id
        for bin_entries, outcomes in zip(entries, per_bin):
            for entry_id, out in zip(bin_entries, outcomes):
                _insert_request(conn, run_id, entry_id, out)
    conn.execute("COMMIT")
    return conn, run_ids

