"""The Silent Degradation Score: the formula's edge cases, the bootstrap, the table and chart."""

from __future__ import annotations

import math

import helpers_db
import numpy as np
import pytest

from kv_transition.canary import sds
from kv_transition.pipeline import analyze_group as analyze  # the phase: analysis, then SDS
from kv_transition.report.build import build_report
from kv_transition.settings import AnalysisConfig

CFG = AnalysisConfig(n_bootstrap=300)




# ---------------------------------------------------------------- the formula

def test_sds_is_relative_drop_over_relative_rise():
    drop, rise, score = sds.sds_parts(0.8, 0.4, 10.0, 12.0)
    assert drop == pytest.approx(0.5) and rise == pytest.approx(0.2)
    assert score == pytest.approx(2.5)
    assert sds.verdict(0.8, drop, rise) == "measured"


@pytest.mark.parametrize("p_comp", [10.0, 9.0])  # flat, and improving perplexity
def test_flat_or_better_perplexity_with_a_drop_is_maximally_silent(p_comp):
    drop, rise, score = sds.sds_parts(0.8, 0.4, 10.0, p_comp)
    assert rise == 0.0 and score == pytest.approx(0.5 / sds.EPS)
    assert sds.verdict(0.8, drop, rise) == "silent"


def test_full_cache_failure_gives_zero_and_is_flagged_meaningless():
    drop, rise, score = sds.sds_parts(0.0, 0.0, 10.0, 30.0)
    assert drop == 0.0 and score == 0.0 and rise == pytest.approx(2.0)
    assert sds.verdict(0.0, drop, rise) == "baseline_fails"


def test_functional_gain_is_no_drop_whatever_perplexity_does():
    for p_comp in (9.0, 10.0, 50.0):
        drop, rise, score = sds.sds_parts(0.5, 0.75, 10.0, p_comp)
        assert drop == 0.0 and score == 0.0
        assert sds.verdict(0.5, drop, rise) == "no_functional_drop"


def test_eps_guards_zero_perplexity():
    drop, rise, score = sds.sds_parts(1.0, 0.0, 0.0, 0.0)
    assert (drop, rise, score) == (1.0, 0.0, pytest.approx(1000.0))


# ---------------------------------------------------------------- the bootstrap

def _paired(full, comp, nll_full, nll_comp, n_tok):
    return sds.Paired(np.array(full, float), np.array(comp, float), np.array(nll_full, float),
                      np.array(nll_comp, float), np.array(n_tok, float))


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
    p = _paired([1] * 7 + [0], [1, 1, 1, 0, 0, 0, 0, 0], [10, 12, 9], [11, 13, 10], [5, 6, 5])
    a = sds.score(p, 500, 0.95, [0, 1])
    b = sds.score(p, 500, 0.95, [0, 1])
    assert a == b
    assert a["f_full"] == 0.875 and a["f_comp"] == 0.375
    assert a["ppl_full"] == pytest.approx(math.exp(31 / 16))
    assert a["sds_ci_low"] <= a["sds"] <= a["sds_ci_high"]
    assert a["sds_ci_high"] > a["sds_ci_low"]


def test_identical_runs_have_zero_sds_with_a_degenerate_ci():
    p = _paired([1, 0, 1, 1], [1, 0, 1, 1], [10, 12], [10, 12], [5, 6])
    row = sds.score(p, 300, 0.95, [0])
    assert row["sds"] == row["sds_ci_low"] == row["sds_ci_high"] == 0.0
    assert row["verdict"] == "no_functional_drop"


# ---------------------------------------------------------------- through the database

def _experiment(tmp_path, full_acc, comp_acc, ppl=True):
    h = helpers_db
    o = lambda acc, kv: h.Outcome(acc=acc, pred="p", kv_bytes=kv)  # noqa: E731
    runs = {("full", 1.0): [[o(a, 4 * h.MIB) for a in full_acc[:4]],
                            [o(a, 4 * h.MIB) for a in full_acc[4:]]],
            ("snapkv", 0.5): [[o(a, h.MIB) for a in comp_acc[:4]],
                              [o(a, h.MIB) for a in comp_acc[4:]]]}
    conn, run_ids = h.build_experiment(tmp_path / "x.sqlite", runs)
    conn.execute("UPDATE scores SET metric = 'pass_at_1'")
    if ppl:
        for (policy, _), run_id in run_ids.items():
            extra = 0.0 if policy == "full" else 1.0
            for k, (nll, n) in enumerate([(10.0, 5), (12.0, 6), (9.0, 5)]):
                conn.execute(
                    "INSERT INTO perplexity(run_id, text_id, text_hash, prefix_tokens, n_tokens, "
                    "nll_sum, kv_bytes, kv_bytes_full, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (run_id, f"t{k}", "h", 64, n, nll + extra,
                     (2 if policy == "full" else 1) * h.MIB, 2 * h.MIB, h.NOW))
    return conn, run_ids


def test_sds_rows_pair_items_and_windows(tmp_path):
    conn, run_ids = _experiment(tmp_path, [1] * 7 + [0], [1, 1, 1, 0, 0, 0, 0, 0])
    (row,) = sds.write_sds(conn, "exp", CFG)
    assert row["run_id"] == run_ids[("snapkv", 0.5)]
    assert row["baseline_run_id"] == run_ids[("full", 1.0)]
    assert (row["n_items"], row["n_texts"]) == (8, 3)
    drop, rise = 0.5 / 0.875, math.exp(34 / 16) / math.exp(31 / 16) - 1
    assert row["func_drop"] == pytest.approx(drop) and row["ppl_rise"] == pytest.approx(rise)
    assert row["sds"] == pytest.approx(drop / rise)
    assert row["kv_retained"] == pytest.approx(0.25)
    assert row["kv_retained_ppl"] == pytest.approx(0.5)
    stored = sds.sds_rows(conn, "exp")
    assert len(stored) == 1 and stored[0]["sds"] == pytest.approx(drop / rise)
    assert stored[0]["detail"]["baseline_below_bar"] is True  # 0.875 < 0.9
    sds.write_sds(conn, "exp", CFG)  # recomputed, never duplicated
    assert conn.execute("SELECT COUNT(*) FROM sds").fetchone()[0] == 1


def test_analyze_draws_the_chart_and_the_report_shows_the_section(tmp_path):
    conn, _ = _experiment(tmp_path, [1] * 8, [1, 1, 0, 0, 0, 0, 0, 0])
    out = analyze(conn, "exp", CFG, tmp_path / "run")
    chart = tmp_path / "run" / "plots" / sds.PLOT_NAME
    assert out["n_sds"] == 1 and chart.stat().st_size > 5000
    report = build_report(conn, "exp", tmp_path / "run").read_text()
    assert "## Silent degradation" in report and f"plots/{sds.PLOT_NAME}" in report
    assert "snapkv (0.5)" in report and "mean nothing" not in report


def test_no_perplexity_means_no_section_and_no_chart(tmp_path):
    conn, _ = _experiment(tmp_path, [1] * 8, [0] * 8, ppl=False)
    out = analyze(conn, "exp", CFG, tmp_path / "run")
    assert out["n_sds"] == 0 and not (tmp_path / "run" / "plots" / sds.PLOT_NAME).exists()
    report = build_report(conn, "exp", tmp_path / "run").read_text()
    assert "Silent degradation" not in report


def test_a_model_failing_at_full_cache_is_reported_as_meaningless(tmp_path):
    conn, _ = _experiment(tmp_path, [0] * 8, [0] * 8)
    (row,) = sds.write_sds(conn, "exp", CFG)
    assert row["sds"] == 0.0 and row["verdict"] == "baseline_fails"
    analyze(conn, "exp", CFG, tmp_path / "run")
    report = build_report(conn, "exp", tmp_path / "run").read_text()
    assert "these SDS values mean nothing" in report
