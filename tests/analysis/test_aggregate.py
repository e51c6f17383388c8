import math

import pytest

from kv_transition.analysis.aggregate import compute_bin_stats, token_f1
from kv_transition.settings import AnalysisConfig

CFG = AnalysisConfig(n_bootstrap=500)


def _by_key(stats, run_ids):
    names = {v: k for k, v in run_ids.items()}
    return {(names[s["run_id"]], s["bin_idx"]): s for s in stats}


def test_token_f1():
    assert token_f1("blue cat", "blue cat") == 1.0
    assert token_f1("blue dog", "blue cat") == 0.5
    assert token_f1("", "") == 1.0
    assert token_f1("", "a b") == 0.0


def test_hand_computed_bin_stats(paired_db):
    conn, run_ids = paired_db
    stats = _by_key(compute_bin_stats(conn, "exp", CFG), run_ids)
    full0, full1 = stats[(("full", 1.0), 0)], stats[(("full", 1.0), 1)]
    snap0, snap1 = stats[(("snapkv", 0.5), 0)], stats[(("snapkv", 0.5), 1)]

    assert (full0["n"], full0["acc_mean"], full1["acc_mean"]) == (4, 0.75, 0.5)
    assert (snap0["acc_mean"], snap1["acc_mean"]) == (1.0, 0.25)
    assert full0["acc_std"] == pytest.approx(0.5)  # sample std of 1,1,1,0
    assert snap0["acc_std"] == 0.0
    assert (snap0["fail_rate"], snap1["fail_rate"]) == (0.0, 0.25)
    # paired against the full cache on the same entries
    assert snap0["acc_delta"] == pytest.approx(0.25)
    assert snap1["acc_delta"] == pytest.approx(-0.25)
    assert (snap0["flip_rate"], snap1["flip_rate"]) == (0.25, 0.25)
    # 1 - F1: bin0 = (0 + 0.5 + 0 + 1) / 4 ; bin1 = (0 + 1 + 0 + 1) / 4
    assert snap0["divergence"] == pytest.approx(0.375)
    assert snap1["divergence"] == pytest.approx(0.5)
    # the baseline against itself
    assert (full1["acc_delta"], full1["flip_rate"], full1["divergence"]) == (0.0, 0.0, 0.0)
    # telemetry: latencies 0.1..0.4 (linear percentiles), measured KV bytes
    assert full0["lat_p50"] == pytest.approx(0.25)
    assert full0["lat_p95"] == pytest.approx(0.385)
    assert snap1["kv_bytes_mean"] == 2 ** 20
    assert full0["mem_p95"] is None  # peak memory never recorded
    assert full0["acc_ci_low"] <= 0.75 <= full0["acc_ci_high"]
    assert snap1["acc_delta_ci_low"] <= -0.25 <= snap1["acc_delta_ci_high"]


def test_rerun_replaces_rows_and_is_reproducible(paired_db):
    conn, _ = paired_db
    first = compute_bin_stats(conn, "exp", CFG)
    second = compute_bin_stats(conn, "exp", CFG)
    assert conn.execute("SELECT COUNT(*) FROM bin_stats").fetchone()[0] == 4
    assert first == second


def test_failure_rolls_back(paired_db, monkeypatch):
    conn, _ = paired_db
    compute_bin_stats(conn, "exp", CFG)
    import kv_transition.analysis.aggregate as agg

    monkeypatch.setattr(agg, "BIN_STATS_COLUMNS", agg.BIN_STATS_COLUMNS + ("no_such_column",))
    with pytest.raises(Exception):
        compute_bin_stats(conn, "exp", CFG)
    assert conn.execute("SELECT COUNT(*) FROM bin_stats").fetchone()[0] == 4


def test_no_baseline_leaves_paired_columns_null(tmp_path, dbh):
    runs = {("snapkv", 0.5): dbh.paired_scenario()[("snapkv", 0.5)]}
    conn, _ = dbh.build_experiment(tmp_path / "x.sqlite", runs=runs)
    stats = compute_bin_stats(conn, "exp", CFG)
    assert all(s["acc_delta"] is None and s["flip_rate"] is None for s in stats)
    assert not any(isinstance(v, float) and math.isnan(v) for s in stats for v in s.values())


def test_single_example_bin_has_null_std(tmp_path, dbh):
    runs = {("full", 1.0): [[dbh.Outcome(1.0, "a")]]}
    conn, _ = dbh.build_experiment(tmp_path / "x.sqlite", runs=runs)
    (stat,) = compute_bin_stats(conn, "exp", CFG)
    assert stat["acc_std"] is None
    # one right answer is weak evidence: Wilson, not the old single point [1, 1] (issue 13)
    assert stat["acc_ci_method"] == "wilson"
    assert stat["acc_ci_low"] == pytest.approx(0.2065, abs=1e-4) and stat["acc_ci_high"] == 1.0


def test_methods_and_paired_test_are_stored(paired_db):
    conn, run_ids = paired_db
    compute_bin_stats(conn, "exp", CFG)
    row = conn.execute(
        "SELECT acc_ci_method, fail_ci_low, fail_ci_high, fail_ci_method, acc_delta_ci_method,"
        " acc_delta_p, acc_delta_test, n_paired, changed_rate, n_clusters FROM bin_stats "
        "WHERE run_id = ? AND bin_idx = 1", (run_ids[("snapkv", 0.5)],)).fetchone()
    assert tuple(row[k] for k in ("acc_ci_method", "fail_ci_method", "acc_delta_ci_method",
                                  "acc_delta_test")) == (
        "wilson", "wilson", "bonett_price", "mcnemar_exact")
    # bin 1: one loss (entry 1) and no gain -> exact McNemar p = 1
    assert row["acc_delta_p"] == pytest.approx(1.0)
    assert row["fail_ci_low"] < 0.25 < row["fail_ci_high"]
    # answers x y / (failed) / c / e against x y / a b / c / d: two changed of four
    assert (row["n_paired"], row["changed_rate"], row["n_clusters"]) == (4, 0.5, 4)


def test_questions_on_one_context_are_one_cluster(tmp_path, dbh):
    runs = {("full", 1.0): [[dbh.Outcome(1.0, "a")] * 4 + [dbh.Outcome(0.0, "b")] * 4]}
    conn, _ = dbh.build_experiment(tmp_path / "x.sqlite", runs=runs)
    (iid,) = compute_bin_stats(conn, "exp", CFG)
    # the first four examples share one context, the last four another
    conn.execute("UPDATE examples SET context = CASE WHEN example_id < 'ex0_4' THEN 'A' "
                 "ELSE 'B' END")
    (clustered,) = compute_bin_stats(conn, "exp", CFG)
    assert (iid["n_clusters"], clustered["n_clusters"]) == (8, 2)
    assert clustered["acc_ci_method"] == "wilson_clustered"
    assert clustered["acc_ci_high"] - clustered["acc_ci_low"] > \
        iid["acc_ci_high"] - iid["acc_ci_low"]
