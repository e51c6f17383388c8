import json

import pytest

from kv_transition.analysis.aggregate import compute_bin_stats
from kv_transition.analysis.transition import (Policy, detect_transition, inconclusive_bins,
                                               plan_tests, write_transitions)
from kv_transition.settings import AnalysisConfig


def _stats(acc, fail, flip=None, n=50):
    """bin_stats rows; flip None means no baseline (no paired signals)."""
    k = len(acc)
    flip = flip if flip is not None else [None] * k
    return [{"bin_idx": i, "n": n, "acc_mean": a, "fail_rate": f, "flip_rate": fl,
             "changed_rate": fl, "n_paired": None if fl is None else n}
            for i, (a, f, fl) in enumerate(zip(acc, fail, flip))]


def test_fail_spike_before_collapse_is_a_transition():
    run = _stats([0.9, 0.9, 0.85, 0.8, 0.8], [0, 0, 0.4, 0, 0], flip=[0.02] * 5)
    base = _stats([0.9] * 5, [0] * 5, flip=[0.0] * 5)
    start, end, why = detect_transition(run, base)
    assert (start, end) == (2, 2)
    assert why["verdict"] == "transition" and why["signal"] == "fail"
    assert why["reference_bin"] == 0 and why["test"] == "boschloo_exact_one_sided"
    assert why["p_adjusted"] < 0.05 and why["p_value"] <= why["p_adjusted"]
    assert why["statistic"] == pytest.approx(0.4)
    assert why["collapse_bin"] is None
    json.dumps(why, allow_nan=False)


def test_flip_spike_counts_as_instability():
    run = _stats([0.9] * 4, [0] * 4, flip=[0.0, 0.05, 0.6, 0.05])
    start, end, why = detect_transition(run, _stats([0.9] * 4, [0] * 4, flip=[0.0] * 4))
    assert (start, end) == (2, 2) and why["zones"][0]["signals"] == ["changed", "flip"]


def test_only_a_rise_counts():
    # instability falls with length: a two-sided check would call this a zone
    run = _stats([0.9] * 4, [0.5, 0.0, 0.0, 0.0])
    start, end, why = detect_transition(run, None)
    assert (start, end) == (None, None) and why["verdict"] == "no_instability"


def test_nine_of_twelve_against_twelve_of_twelve_is_not_strong():
    # the old detector called 9/12 vs 12/12 strong through a single-point reference CI
    run = _stats([1.0, 0.75, 0.75], [0.0, 0.25, 0.0], n=12)
    start, end, why = detect_transition(run, None)
    assert (start, end) == (None, None)
    # Boschloo's exact p is below Fisher's (0.1087 here), never above it, and still not 0.05
    assert why["tests"][0]["test"] == "boschloo_exact_one_sided"
    assert why["tests"][0]["p"] == pytest.approx(0.0629, abs=1e-3)


def test_every_candidate_zone_is_reported():
    # seven bins: the shortest third (0-2) is the pooled reference
    run = _stats([0.9] * 7, [0, 0, 0, 0.5, 0, 0.5, 0.5])
    start, end, why = detect_transition(run, None)
    assert why["reference_bins"] == [0, 1, 2] and (start, end) == (3, 3)
    assert [(z["start"], z["end"]) for z in why["zones"]] == [(3, 3), (5, 6)]


def test_collapsed_bins_are_excluded_and_never_the_reference():
    # bin 0 collapsed: the reference is bin 1; the spike after collapse at bin 4 is untested
    run = _stats([0.1, 0.9, 0.9, 0.1, 0.1], [0.9, 0, 0.5, 0, 0.9])
    start, end, why = detect_transition(run, None)
    assert why["reference_bin"] == 1 and (start, end) == (2, 2)
    assert {t["bin_idx"] for t in why["tests"]} == {2}
    assert why["collapse_bin"] == 0 and why["collapse_floor"] == pytest.approx(0.45)
    assert why["bins"][0]["z_fail"] is None  # collapsed: not standardised


def test_every_bin_collapsed_has_no_reference():
    start, end, why = detect_transition(_stats([0.1] * 3, [0.5] * 3), _stats([0.9] * 3, [0] * 3))
    assert why["verdict"] == "no_reference"


def test_suggestive_but_not_significant_is_weak_and_inconclusive():
    run = _stats([0.67] * 4, [0, 1 / 12, 1 / 4, 0], n=12)
    start, end, why = detect_transition(run, None)
    assert (start, end) == (None, None)
    assert why["verdict"] == "weak" and why["inconclusive_bins"] == [2]
    assert inconclusive_bins(plan_tests(run, None) | {"tests": []}, Policy()) == []


def test_more_looks_need_more_evidence():
    # 5/30 against 0/30: Boschloo p = 0.0137, BH over the two tested bins 0.027, between
    # alpha / 3 and alpha
    run = _stats([0.9] * 3, [0, 1 / 6, 0], n=30)
    _, _, once = detect_transition(run, None, Policy(looks=1))
    _, _, thrice = detect_transition(run, None, Policy(looks=3))
    assert once["verdict"] == "transition" and thrice["verdict"] == "weak"
    assert thrice["level"] == pytest.approx(0.05 / 3, abs=1e-6)


def test_one_bin_does_not_crash():
    start, end, why = detect_transition(_stats([0.5], [0.2]), None)
    assert (start, end) == (None, None)
    assert why["verdict"] == "too_few_bins"
    json.dumps(why, allow_nan=False)


def test_write_transitions_replaces_rows_and_stores_the_test(paired_db):
    conn, run_ids = paired_db
    cfg = AnalysisConfig(n_bootstrap=200)
    compute_bin_stats(conn, "exp", cfg)
    write_transitions(conn, "exp", cfg)
    results = write_transitions(conn, "exp", cfg)
    rows = conn.execute("SELECT run_id, rationale_json, verdict, reference_bin "
                        "FROM transition_summary").fetchall()
    assert sorted(r[0] for r in rows) == sorted(run_ids.values())
    verdicts = {r["run_id"]: r["rationale"]["verdict"] for r in results}
    assert verdicts[run_ids[("full", 1.0)]] == "baseline"
    snap = next(r for r in rows if r["run_id"] == run_ids[("snapkv", 0.5)])
    # snapkv's bin 1 (0.25) is below half the full cache's best (0.75): collapsed, untested
    assert snap["reference_bin"] == 0 and snap["verdict"] == "no_tests"
    for row in rows:
        assert json.loads(row["rationale_json"])["method"] == "onesided_boschloo_v3"


def test_multiplicity_spans_settings(dbh, tmp_path):
    """The same borderline bin in one setting is significant alone, not among four."""
    ok = [dbh.Outcome(1.0, "a")] * 30
    spike = [dbh.Outcome(0.0, "", failure="EMPTY")] * 6 + [dbh.Outcome(1.0, "a")] * 24
    flat = {("full", 1.0): [ok] * 3}
    one = {**flat, ("snapkv", 0.5): [ok, spike, ok]}
    many = {**one, **{("snapkv", b): [ok] * 3 for b in (0.4, 0.3, 0.2)}}
    verdicts = []
    for name, runs in (("one", one), ("many", many)):
        conn, ids = dbh.build_experiment(tmp_path / f"{name}.sqlite", runs=runs)
        cfg = AnalysisConfig(n_bootstrap=100, multiplicity="holm")
        compute_bin_stats(conn, "exp", cfg)
        res = {r["run_id"]: r for r in write_transitions(conn, "exp", cfg)}
        verdicts.append(res[ids[("snapkv", 0.5)]]["rationale"]["verdict"])
    assert verdicts == ["transition", "weak"]


def test_boschloo_keeps_the_level_and_beats_fisher():
    """Exact size of the one-sided test at 5 vs 10 examples: the chance of p <= 0.1 under a
    common rate never exceeds 0.1, and no table has a larger p than Fisher's."""
    from scipy.stats import binom, fisher_exact

    from kv_transition.analysis.transition import exact_greater_p

    n, n0, alpha = 5, 10, 0.1
    tables = [(k, k0) for k in range(n + 1) for k0 in range(n0 + 1)]
    p = {t: exact_greater_p(t[0], n, t[1], n0)[0] for t in tables}
    fisher = {(k, k0): fisher_exact([[k, n - k], [k0, n0 - k0]], alternative="greater")[1]
              for k, k0 in tables}
    assert all(p[t] <= fisher[t] + 1e-9 for t in tables)
    rejected = [t for t in tables if p[t] <= alpha]
    assert len(rejected) > sum(fisher[t] <= alpha for t in tables)  # strictly more power
    for rate in (0.05, 0.2, 0.5, 0.8):
        size = sum(binom.pmf(k, n, rate) * binom.pmf(k0, n0, rate) for k, k0 in rejected)
        assert size <= alpha + 1e-9, rate


def test_large_tables_fall_back_to_fisher():
    from kv_transition.analysis.transition import FISHER, exact_greater_p

    p, test = exact_greater_p(40, 300, 20, 600)
    assert test == FISHER and 0 < p < 1e-3
