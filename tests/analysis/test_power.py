"""A fast version of benchmarks/detector_power.py: few replicates, fixed seeds, loose bounds."""

import numpy as np
import pytest

from kv_transition.analysis.power import (SCENARIOS, analyse, coverage, draw,
                                          run_with_refinement, scenario_rates)
from kv_transition.analysis.transition import Policy, growth_plan, planned_looks


def test_planted_zone_is_found_at_30_per_bin():
    # at 100 per bin it is found every time too, but each new 100-vs-200 table costs Boschloo
    # ~0.6 s: 30 per bin keeps this fast
    rates = scenario_rates(SCENARIOS["zone_then_collapse"], 30, reps=10, seed=1)
    assert rates["detected"] >= 0.8 and rates["false_alarm"] <= 0.2


def test_faint_zone_is_found_at_30_per_bin():
    # failures 0.02 -> 0.25 in two bins, nothing else: Fisher's conditional test found it 87%
    # of the time in benchmarks/detector_power.py, Boschloo's 92-94%
    rates = scenario_rates(SCENARIOS["fail_only_zone"], 30, reps=20, seed=5)
    assert rates["detected"] >= 0.7 and rates["false_alarm"] <= 0.1


def test_a_smooth_decline_changes_answers_at_a_constant_rate():
    # the null must be null: a diverged answer differs from the full cache's whether or not
    # it is right, so the changed rate is fail + (1 - fail) * diverge in every bin while the
    # accuracy falls (it used to rise from 0.047 to 0.059 with the falling accuracy)
    stats = analyse(draw(SCENARIOS["smooth_decline"], 4000, np.random.default_rng(6)),
                    Policy())["stats"][2]
    assert all(abs(s["changed_rate"] - (0.02 + 0.98 * 0.05)) < 0.015 for s in stats)
    assert stats[0]["acc_mean"] - stats[-1]["acc_mean"] > 0.3


def test_no_strong_zone_on_flat_decline_or_collapse():
    for name in ("flat", "smooth_decline", "collapse_no_warning"):
        rates = scenario_rates(SCENARIOS[name], 30, reps=15, seed=2)
        assert rates["strong"] <= 0.2, (name, rates)


def test_accuracy_interval_covers_near_one():
    # the old percentile bootstrap covered p = 0.97 at n = 12 in 31% of runs
    c = coverage(0.97, 12, reps=150, seed=3)
    assert c["acc"] >= 0.88 and c["acc_method"] == "wilson"


def test_refinement_grows_only_what_it_tested_and_keeps_the_cap():
    out = run_with_refinement(SCENARIOS["flat"], 12, 48, np.random.default_rng(4),
                              Policy(looks=planned_looks(12, 48)))
    assert set(out["n_by_bin"].values()) <= {12, 24, 48}
    assert out["rationale"]["looks"] == 3 and out["rationale"]["level"] < 0.0167


def test_growth_plan_doubles_inconclusive_and_reference_bins():
    rationale = {"inconclusive_bins": [3], "reference_bins": [0, 1], "reference_bin": 0}
    n = {b: 12 for b in range(5)}
    assert growth_plan([rationale], n, 20) == {0: 20, 1: 20, 3: 20}
    assert growth_plan([{"inconclusive_bins": []}], n, 48) == {}
    assert planned_looks(12, 48) == 3 and planned_looks(10, 50) == 4 and planned_looks(5, None) == 1


def test_simulated_rows_are_prefix_consistent():
    data = draw(SCENARIOS["flat"], 20, np.random.default_rng(0))
    assert len(data[1][0]) == len(data[2][5]) == 20
    assert {r["entry_id"] for r in data[1][2]} == {r["entry_id"] for r in data[2][2]}


def test_exact_coverage_and_what_any_interval_can_reach():
    from kv_transition.analysis.power import attainable_coverage, exact_coverage

    # at p = 0.9 and n = 12 the counts' masses jump from 88.9% to 97.4%: no deterministic
    # interval can cover 93-97%, and Wilson sits on the nearest value above
    below, inside, above = attainable_coverage(0.9, 12)
    assert inside == [] and below == pytest.approx(0.8891, abs=1e-3)
    assert exact_coverage(0.9, 12) == pytest.approx(above, abs=1e-6)
    # elsewhere Wilson is within the band, except n = 30 at p = 0.9 (97.4%)
    for p, n in [(0.5, 12), (0.5, 30), (0.5, 100), (0.9, 100), (0.97, 12), (0.97, 30),
                 (0.97, 100)]:
        assert 0.93 <= exact_coverage(p, n) <= 0.97, (p, n)
    assert exact_coverage(0.9, 30) > 0.97


def test_exact_coverage_of_any_interval_rule():
    from kv_transition.analysis.intervals import wilson
    from kv_transition.analysis.power import exact_coverage

    assert exact_coverage(0.9, 30, interval=lambda k, n: wilson(k / n, n)) == \
        pytest.approx(exact_coverage(0.9, 30))
    # an interval that is always [0, 1] covers everything; one that is never, nothing
    assert exact_coverage(0.5, 12, interval=lambda k, n: (0.0, 1.0)) == pytest.approx(1.0)
    assert exact_coverage(0.5, 12, interval=lambda k, n: (0.9, 1.0)) == 0.0
