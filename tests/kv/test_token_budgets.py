"""Budgets in tokens (kv.budget_tokens): the same grid, a per-context fraction, honest labels."""

import sqlite3

import pytest
from typer.testing import CliRunner

from kvt_testkit import write_config
from kv_transition.cli import app
from kv_transition.errors import BadInput
from kv_transition.kv.registry import budget_label, make_press
from kv_transition.settings import load_settings


def test_a_token_budget_is_this_contexts_fraction():
    press, applied = make_press("snapkv", 64.0, 256)
    assert applied["compression_ratio"] == pytest.approx(1 - 64.5 / 256)
    assert applied["budget_tokens"] == 64
    press, applied = make_press("snapkv", 512.0, 256)  # the whole context fits: no press
    assert press is None and applied["budget_tokens"] == 512
    assert budget_label(64.0) == "64 tok" and budget_label(0.5) == "0.5"


@pytest.mark.parametrize("yaml_text, message", [
    ("kv:\n  budget_tokens: [1, 64]\n", r"budget_tokens must be whole numbers of tokens >= 2"),
    ("kv:\n  policies: [int4]\n  budget_tokens: [64]\n",
     r"kv.budget_tokens applies to eviction policies"),
])
def test_bad_token_budgets_exit_2(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(BadInput, match=message):
        load_settings(path)


def test_a_run_with_token_budgets(home, tmp_path):
    cfg = write_config(tmp_path / "t.yaml", kv={"policies": ["snapkv"], "budgets": [1.0, 0.5],
                                                "budget_tokens": [48]})
    result = CliRunner().invoke(app, ["all", "-c", str(cfg), "--no-progress"])
    assert result.exit_code == 0, result.output
    db = home / "runs" / "tiny" / "kv_transition.sqlite"
    conn = sqlite3.connect(db)
    budgets = sorted(r[0] for r in conn.execute("SELECT kv_budget FROM runs"))
    assert budgets == [0.5, 1.0, 48.0]
    # every context is longer than 48 tokens: each kept 48 context tokens (+ the question)
    import json

    rows = conn.execute(
        "SELECT s.raw_json, t.notes_json FROM responses s JOIN requests q USING (request_id) "
        "JOIN runs r USING (run_id) JOIN telemetry t USING (request_id) "
        "WHERE r.kv_budget = 48").fetchall()
    assert rows
    for raw, notes in rows:
        applied = json.loads(raw)["applied"]
        assert applied["budget_tokens"] == 48
        tokens = json.loads(notes)["kv_layer_tokens"]
        question = json.loads(notes)["question_tokens"]
        assert set(tokens) == {48 + question}
    report = (home / "runs" / "tiny" / "report.md").read_text()
    assert "snapkv (48 tok)" in report
