"""Numbered schema migrations recorded in a ``migrations`` table."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from kv_transition.db.schema import MIGRATIONS


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    return {row[0] for row in conn.execute("SELECT version FROM migrations")}


def migrate(conn: sqlite3.Connection, upto: int | None = None) -> list[int]:
    """Apply every migration not yet recorded (up to ``upto``); return the versions applied."""
    done = applied_versions(conn)
    applied = []
    for version, name, sql in MIGRATIONS:
        if version in done or (upto is not None and version > upto):
            continue
        now = datetime.now(timezone.utc).isoformat()
        # executescript commits implicitly; wrap the DDL and the record in one script
        try:
            conn.executescript(
                "BEGIN;\n" + sql + "\nINSERT INTO migrations(version, name, applied_at) "
                f"VALUES ({version}, '{name}', '{now}');\nCOMMIT;"
            )
        except sqlite3.DatabaseError:
            # several `run` workers may open an old database at once: the loser of the race
            # finds the migration recorded by the winner and goes on
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if version in applied_versions(conn):
                continue
            raise
        applied.append(version)
    return applied
