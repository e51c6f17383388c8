"""The whole pipeline with eviction and quantization on one grid (issue 4's "done when")."""

import json
import sqlite3

from typer.testing import CliRunner

from kv_transition.cli import app
from kvt_testkit import TINY_CONFIG, write_config

KV = {"policies": ["snapkv", "int4", "kivi"], "budgets": [1.0, 0.5, 0.25],
      # the tiny model's heads have 16 channels; a 32-token residual leaves most of the
      # 96-192 token contexts quantized
      "quant": {"group_size": 16, "residual_length": 32}}


def test_snapkv_int4_kivi_on_one_memory_axis(home, tmp_path):
    cfg = write_config(tmp_path / "q.yaml", kv=KV,
                       dataset={**TINY_CONFIG["dataset"], "n_per_bin": 2})
    result = CliRunner().invoke(app, ["all", "-c", str(cfg), "--no-progress"])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(home / "runs" / "tiny" / "kv_transition.sqlite")
    runs = conn.execute("SELECT kv_policy, kv_budget FROM runs ORDER BY run_id").fetchall()
    assert sorted(runs) == sorted([("full", 1.0)] + [(p, b) for p in KV["policies"]
                                                     for b in (0.5, 0.25)])
    rows = conn.execute(
        "SELECT r.kv_policy, r.kv_budget, t.kv_bytes, t.notes_json FROM telemetry t "
        "JOIN requests q USING(request_id) JOIN runs r USING(run_id)").fetchall()
    assert len(rows) == 7 * 4 and all(kv for _, _, kv, _ in rows)
    notes = {}
    mean_kv = {}
    for policy, budget, kv, text in rows:
        notes.setdefault((policy, budget), []).append(json.loads(text))
        mean_kv.setdefault((policy, budget), []).append(kv)
    mean_kv = {k: sum(v) / len(v) for k, v in mean_kv.items()}
    # int4 runs 4-bit at both budgets (a cap) and says so; kivi picks narrower widths at 0.25
    for budget in (0.5, 0.25):
        assert {n["kv_budget_nominal"] for n in notes[("int4", budget)]} == {0.25}
    assert mean_kv[("int4", 0.5)] == mean_kv[("int4", 0.25)] < mean_kv[("full", 1.0)] / 4
    assert mean_kv[("kivi", 0.25)] < mean_kv[("kivi", 0.5)] < mean_kv[("full", 1.0)]
    assert mean_kv[("snapkv", 0.25)] < mean_kv[("snapkv", 0.5)]
    for n in notes[("kivi", 0.25)]:
        assert n["kv_ratio_payload"] < n["kv_ratio_true"] < 2.0  # float32 model: full = 2.0
    run_dir = home / "runs" / "tiny"
    assert (run_dir / "plots" / "acc_vs_kv_memory.png").stat().st_size > 5000
    report = (run_dir / "report.md").read_text()
    assert "](plots/acc_vs_kv_memory.png)" in report
    assert "## KV memory accounting" in report and "| int4 (0.5) | 0.5 | 0.250 |" in report
    assert "| snapkv (0.5) | 0.5 | — |" in report  # eviction on the same table
    assert "this model stores float32" in report
