"""The integrity check's place in a run: before a compressing policy's requests, on the
engine that will answer them (engines/integrity.py), and its verdicts stored with the run.

A failure is exit 2 before anything is written, on the local and the Ray executor alike.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

from kv_transition.db.connect import transaction
from kv_transition.errors import BadInput
from kv_transition.policy.spec import Setting, policy_spec
from kv_transition.settings import Settings


def check_integrity(settings: Settings, engine, grid: list[Setting]) -> list:
    """Each compressing policy's integration with the model, checked before its requests run
    (engines/integrity.py); a failure is exit 2, before anything is written."""
    # every compressing setting: fractions below 1 and budgets in tokens (above 1)
    policies = sorted({p for p, b in grid if b != 1.0 and policy_spec(p).press is not None})
    if not settings.kv.integrity.check or not policies or not hasattr(engine, "prefill"):
        return []
    # imported only now: it imports torch, which an HTTP-only run never needs
    from kv_transition.engines.integrity import check_policy

    verdicts = [check_policy(engine, p, settings.kv.integrity.max_kl) for p in policies]
    failed = [v for v in verdicts if not v.passed]
    if failed:
        raise BadInput("\n".join(v.failure() for v in failed))
    return verdicts


def store_verdicts(conn: sqlite3.Connection, settings: Settings, verdicts: list) -> None:
    if not verdicts:
        return
    now = datetime.now(timezone.utc).isoformat()
    with transaction(conn):
        conn.executemany(
            "INSERT OR REPLACE INTO integrity_checks(exp_group_id, model_name, kv_policy, "
            "model_class, passed, checks_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(settings.output.exp_group_id, settings.model.name, v.policy, v.model_class,
              int(v.passed), json.dumps(v.checks), now) for v in verdicts])
