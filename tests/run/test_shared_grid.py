"""The grid with one shared prefill per example answers exactly as fresh prefills do."""

import sqlite3

from typer.testing import CliRunner

from kv_transition.cli import app


def _answers(db):
    conn = sqlite3.connect(db)
    return conn.execute(
        "SELECT u.kv_policy, u.kv_budget, r.entry_id, s.text, t.kv_bytes, c.acc, c.f1, "
        "t.notes_json FROM responses s JOIN requests r USING(request_id) JOIN runs u USING(run_id) "
        "JOIN telemetry t USING(request_id) JOIN scores c USING(request_id) ORDER BY 1, 2, 3"
    ).fetchall()


def test_shared_and_fresh_prefill_give_the_same_rows(home, tiny_config):
    grid = ["--set", "kv.budgets=[1.0,0.5,0.25]", "--set", "decoding.max_tokens=6"]
    for exp, shared in (("fresh", "false"), ("shared", "true")):
        prep = CliRunner().invoke(app, ["prepare", "-c", str(tiny_config),
                                        "--set", f"output.exp_group_id={exp}"])
        assert prep.exit_code == 0, prep.output
        result = CliRunner().invoke(app, ["run", "-c", str(tiny_config), "--no-progress", *grid,
                                          "--set", f"output.exp_group_id={exp}",
                                          "--set", f"kv.shared_prefill={shared}"])
        assert result.exit_code == 0, result.output
        scored = CliRunner().invoke(app, ["score", "-c", str(tiny_config),
                                          "--set", f"output.exp_group_id={exp}"])
        assert scored.exit_code == 0, scored.output
    fresh = _answers(home / "runs" / "fresh" / "kv_transition.sqlite")
    shared = _answers(home / "runs" / "shared" / "kv_transition.sqlite")
    assert len(fresh) == len(shared) == 5 * 6
    assert [row[:7] for row in fresh] == [row[:7] for row in shared]
    assert all('"shared_prefill": true' in row[7] for row in shared)
    assert not any('"shared_prefill": true' in row[7] for row in fresh)
