import json

import pytest

from kv_transition.analysis.aggregate import compute_bin_stats
from kv_transition.analysis.transition import detect_transition, write_transitions
from kv_transition.settings import AnalysisConfig


def _stats(acc, fail, std=None, flip=None, n=50, half_ci=0.05):
    k = len(acc)
    std = std if std is not None else [0.3] * k
    flip = flip if flip is not None else [None] * k
    return [{"bin_idx": i, "n": n, "acc_mean": a, "acc_ci_low": a - half_ci,
             "acc_ci_high": a + half_ci, "acc_std": s, "fail_rate": f, "flip_rate": fl}
            for i, (a, f, s, fl) in enumerate(zip(acc, fail, std, flip))]


def test_fail_spike_before_collapse_is_a_transition():
    run = _stats([0.9, 0.9, 0.85, 0.8, 0.8], [0, 0, 0.4, 0, 0], flip=[0.02] * 5)
    base = _stats([0.9] * 5, [0] * 5, flip=[0.0] * 5)
    start, end, why = detect_transition(run, base, z_threshold=1.0)
    assert (start, end) == (2, 2)
    assert why["verdict"] == "transition" and why["evidence"] == "strong"
    assert why["bins"][2]["z_fail"] == pytest.approx(2.0)
    assert why["bins"][2]["triggers"] == ["fail"]
    assert why["collapse_bin"] is None and why["acc_drop_vs"] == "baseline"
    assert why["p_fail_higher"] < 0.05
    json.dumps(why, allow_nan=False)


def test_flip_spike_counts_as_instability():
    run = _stats([0.9] * 4, [0] * 4, flip=[0.0, 0.05, 0.6, 0.05])
    start, end, why = detect_transition(run, _stats([0.9] * 4, [0] * 4), 1.0)
    assert (start, end) == (2, 2) and why["bins"][2]["triggers"] == ["flip"]


def test_constant_series_has_no_zscores():
    start, end, why = detect_transition(_stats([0.7] * 4, [0.1] * 4), None, 1.0)
    assert (start, end) == (None, None)
    assert why["verdict"] == "constant"
    assert all(b["z_std"] == 0.0 for b in why["bins"])
    json.dumps(why, allow_nan=False)


def test_tiny_n_with_overlapping_cis_is_weak():
    run = _stats([0.67] * 5, [0, 0, 2 / 3, 0, 0], n=3, half_ci=0.5)
    start, end, why = detect_transition(run, None, 1.0)
    assert (start, end) == (None, None)
    assert why["verdict"] == "weak" and why["evidence"] == "weak"
    assert why["candidate"] == [2, 2]
    assert why["p_fail_higher"] > 0.05


def test_one_bin_does_not_crash():
    start, end, why = detect_transition(_stats([0.5], [0.2]), None, 1.0)
    assert (start, end) == (None, None)
    assert why["verdict"] == "too_few_bins"
    json.dumps(why, allow_nan=False)


def test_spike_after_collapse_is_not_a_transition():
    run = _stats([0.9, 0.9, 0.1, 0.1, 0.1], [0, 0, 0, 0, 0.5])
    start, end, why = detect_transition(run, None, 1.0)
    assert (start, end) == (None, None)
    assert why["verdict"] == "no_instability"
    assert why["collapse_bin"] == 2 and why["collapse_floor"] == pytest.approx(0.45)


def test_zone_at_first_bin_compares_against_next_bin():
    run = _stats([0.9] * 4, [0.5, 0, 0, 0])
    start, end, why = detect_transition(run, None, 1.0)
    assert (start, end) == (0, 0) and why["reference_bin"] == 1


def test_every_bin_unstable_is_weak_not_a_crash():
    # at a low threshold std fires in bin 1 and fail in bin 0: no stable bin remains
    run = _stats([0.9, 0.9], [0.3, 0.1], std=[0.1, 0.3])
    start, end, why = detect_transition(run, None, 0.5)
    assert (start, end) == (None, None)
    assert why["verdict"] == "weak" and why["reference_bin"] is None


def test_missing_std_values_are_tolerated():
    run = _stats([0.9, 0.9, 0.9], [0, 0.6, 0], std=[None, None, None])
    start, end, why = detect_transition(run, None, 1.0)
    assert (start, end) == (1, 1)
    assert why["bins"][0]["z_std"] is None


def test_write_transitions_replaces_rows(paired_db):
    conn, run_ids = paired_db
    cfg = AnalysisConfig(n_bootstrap=200)
    compute_bin_stats(conn, "exp", cfg)
    write_transitions(conn, "exp", cfg)
    results = write_transitions(conn, "exp", cfg)
    rows = conn.execute("SELECT run_id, rationale_json FROM transition_summary").fetchall()
    assert sorted(r[0] for r in rows) == sorted(run_ids.values())
    assert {r["rationale"]["verdict"] for r in results} <= {
        "transition", "weak", "no_instability", "constant", "too_few_bins"}
    for _, text in rows:
        assert json.loads(text)["method"] == "zscore_v1"
