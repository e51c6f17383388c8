import csv

import pytest

from kv_transition.analysis.plots import PLOT_NAMES
from kv_transition.analysis.run_analysis import analyze
from kv_transition.errors import BadInput
from kv_transition.settings import AnalysisConfig

CFG = AnalysisConfig(n_bootstrap=200)


def test_analyze_writes_every_artifact(paired_db, tmp_path):
    conn, run_ids = paired_db
    summary = analyze(conn, "exp", CFG, tmp_path / "run")
    assert summary["n_runs"] == 2 and summary["n_bin_stats"] == 4
    assert set(summary["verdicts"]) == set(run_ids.values())
    assert sorted(p.name for p in (tmp_path / "run" / "plots").iterdir()) == sorted(PLOT_NAMES)
    with open(tmp_path / "run" / "tables" / "bin_stats.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    snap1 = next(r for r in rows if r["kv_policy"] == "snapkv" and r["bin_idx"] == "1")
    assert float(snap1["acc_delta"]) == pytest.approx(-0.25)
    assert conn.execute("SELECT COUNT(*) FROM transition_summary").fetchone()[0] == 2


def test_unscored_experiment_is_bad_input(paired_db, tmp_path):
    conn, _ = paired_db
    conn.execute("DELETE FROM failures")
    conn.execute("DELETE FROM scores")
    with pytest.raises(BadInput, match="run `score` first"):
        analyze(conn, "exp", CFG, tmp_path / "run")
    assert conn.execute("SELECT COUNT(*) FROM bin_stats").fetchone()[0] == 0


def test_unknown_experiment_is_bad_input(paired_db, tmp_path):
    conn, _ = paired_db
    with pytest.raises(BadInput, match="no runs"):
        analyze(conn, "nope", CFG, tmp_path / "run")
