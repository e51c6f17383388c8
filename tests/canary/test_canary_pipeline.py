"""The canary end to end through the CLI on the builtin tiny model: functional tasks, the
sandbox, perplexity under a real press, SDS, the chart and the report section."""

from __future__ import annotations

import json
import sqlite3

from typer.testing import CliRunner

from kvt_testkit import write_config
from kv_transition.cli import app

CANARY_TABLES = ("runs", "requests", "responses", "scores", "functional_scores", "perplexity",
                 "sds")
# the shared tiny grid (model, binning, analysis) with the canary's own task, policy and probes
CANARY_SECTIONS = {
    "dataset": {"name": "functional", "task": "mix", "lengths": [96, 160], "n_per_bin": 2,
                "seed": 0},
    "kv": {"policies": ["streamingllm"], "budgets": [1.0, 0.5]},
    "decoding": {"max_tokens": 4},
    "canary": {"perplexity": {"n_texts": 2, "prefix_tokens": 48, "continuation_tokens": 8}},
    "output": {"exp_group_id": "canary-tiny"},
}


def cli(*args):
    args = [*map(str, args)] + (["--no-progress"] if args[0] in ("run", "all") else [])
    return CliRunner().invoke(app, args)


def counts(db):
    conn = sqlite3.connect(db)
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in CANARY_TABLES}


def test_canary_runs_through_all_and_reports_sds(home, tmp_path):
    config = write_config(tmp_path / "canary.yaml", **CANARY_SECTIONS)
    result = cli("all", "-c", config)
    assert result.exit_code == 0, result.output
    run_dir = home / "runs" / "canary-tiny"
    db = run_dir / "kv_transition.sqlite"
    n = counts(db)
    # full + streamingllm@0.5, 2 bins x 2 items; 2 held-out windows per run; one SDS row
    assert n == {"runs": 2, "requests": 8, "responses": 8, "scores": 8,
                 "functional_scores": 8, "perplexity": 4, "sds": 1}
    conn = sqlite3.connect(db)
    kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM functional_scores GROUP BY kind"))
    assert kinds == {"code": 4, "tool": 4}
    assert conn.execute("SELECT COUNT(*) FROM perplexity WHERE nll_sum > 0 AND n_tokens = 8 "
                        "AND kv_bytes > 0").fetchone()[0] == 4
    assert (run_dir / "plots" / "divergence.png").stat().st_size > 5000
    report = (run_dir / "report.md").read_text()
    assert "## Silent degradation" in report and "plots/divergence.png" in report
    # a random-weight model fails at full cache: the report must not sell its SDS
    assert "these SDS values mean nothing" in report

    assert cli("all", "-c", config).exit_code == 0  # rerun: nothing new, nothing duplicated
    assert counts(db) == n


def test_scoring_runs_the_sandbox_on_real_answers_and_sds_sees_the_drop(home, tmp_path):
    config = write_config(tmp_path / "canary.yaml", **CANARY_SECTIONS)
    assert cli("prepare", "-c", config).exit_code == 0
    assert cli("run", "-c", config).exit_code == 0
    db = home / "runs" / "canary-tiny" / "kv_transition.sqlite"
    conn = sqlite3.connect(db)
    # Fault injection: the full cache answers every item with its gold answer, so the random
    # model's compressed run is a functional drop the scorers and SDS must see.
    conn.execute(
        "UPDATE responses SET text = (SELECT json_extract(e.answers_json, '$[0]') FROM requests q "
        "JOIN manifest_entries m ON m.entry_id = q.entry_id JOIN examples e ON "
        "e.dataset_id = m.dataset_id AND e.example_id = m.example_id "
        "WHERE q.request_id = responses.request_id) WHERE request_id IN (SELECT request_id "
        "FROM requests q JOIN runs r USING(run_id) WHERE r.kv_policy = 'full')")
    conn.commit()
    assert cli("score", "-c", config).exit_code == 0
    assert cli("analyze", "-c", config).exit_code == 0
    rows = conn.execute(
        "SELECT r.kv_policy, f.kind, f.passed, f.sandbox FROM functional_scores f "
        "JOIN requests q USING(request_id) JOIN runs r USING(run_id)").fetchall()
    full = [(kind, passed, box) for policy, kind, passed, box in rows if policy == "full"]
    assert all(passed == 1 for _, passed, _ in full)
    assert all("rlimits" in box for kind, _, box in full if kind == "code")
    acc = conn.execute("SELECT AVG(s.acc) FROM scores s JOIN requests q USING(request_id) "
                       "JOIN runs r USING(run_id) WHERE r.kv_policy = 'full'").fetchone()[0]
    assert acc == 1.0
    f_full, f_comp, drop, verdict, detail = conn.execute(
        "SELECT f_full, f_comp, func_drop, verdict, detail_json FROM sds").fetchone()
    assert f_full == 1.0 and f_comp == 0.0 and drop == 1.0
    assert verdict in ("silent", "measured")
    assert json.loads(detail)["kinds_full"]["tool"]["schema_valid"] == 1.0


def test_a_bad_heldout_file_is_exit_2_and_leaves_the_database_alone(home, tmp_path):
    config = write_config(tmp_path / "canary.yaml", **CANARY_SECTIONS)
    assert cli("prepare", "-c", config).exit_code == 0
    db = home / "runs" / "canary-tiny" / "kv_transition.sqlite"
    before = list(sqlite3.connect(db).iterdump())
    bad = tmp_path / "held.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    result = cli("run", "-c", config, "--set", f"canary.perplexity.path={bad}")
    assert result.exit_code == 2 and "line 2" in result.output
    assert list(sqlite3.connect(db).iterdump()) == before
