import sqlite3

from kv_transition.db.connect import connect, transaction
from kv_transition.db.migrations import migrate
from kv_transition.db.schema import MIGRATIONS, TABLES


def _schema(conn):
    return sorted(r[0] for r in conn.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'migrations'"))


def test_fresh_database_has_every_contract_table(tmp_path):
    conn = connect(tmp_path / "x.sqlite")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(TABLES) <= names
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_migrating_step_by_step_equals_from_scratch(tmp_path):
    stepwise = sqlite3.connect(tmp_path / "a.sqlite", isolation_level=None)
    migrate(stepwise, upto=1)
    migrate(stepwise)
    scratch = connect(tmp_path / "b.sqlite")
    assert _schema(stepwise) == _schema(scratch)
    versions = [r[0] for r in scratch.execute("SELECT version FROM migrations ORDER BY version")]
    assert versions == [v for v, _, _ in MIGRATIONS]


def test_migrate_twice_applies_nothing(tmp_path):
    conn = connect(tmp_path / "x.sqlite")
    assert migrate(conn) == []


def test_transaction_rolls_back_on_error(tmp_path):
    conn = connect(tmp_path / "x.sqlite")
    try:
        with transaction(conn):
            conn.execute("INSERT INTO experiments VALUES ('e', 'now', 'cfg', NULL, NULL)")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert conn.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 0


def test_foreign_keys_reject_orphans(tmp_path):
    conn = connect(tmp_path / "x.sqlite")
    try:
        conn.execute("INSERT INTO requests(run_id, entry_id, prompt_json, max_tokens, temperature) "
                     "VALUES (99, 99, '{}', 4, 0)")
    except sqlite3.IntegrityError:
        return
    raise AssertionError("orphan request was accepted")
