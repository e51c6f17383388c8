import re

import pytest

from kv_transition.analysis.aggregate import compute_bin_stats
from kv_transition.analysis.plots import PLOT_NAMES
from kv_transition.analysis.transition import write_transitions
from kv_transition.analysis.run_analysis import analyze
from kv_transition.errors import BadInput
from kv_transition.report.build import build_report
from kv_transition.settings import AnalysisConfig

SECRET = "sk-test-DO-NOT-PRINT-4242"


@pytest.fixture(scope="module")
def report(dbh, tmp_path_factory):
    """One analyzed experiment and its report, shared by the tests that only read them."""
    tmp_path = tmp_path_factory.mktemp("report")
    config = "engine:\n  kind: openai\n  api_key_env: KVT_FAKE_API_KEY\n"
    conn, _ = dbh.build_experiment(tmp_path / "x.sqlite", config_yaml=config)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVT_FAKE_API_KEY", SECRET)
        analyze(conn, "exp", AnalysisConfig(n_bootstrap=300), tmp_path)
        text = build_report(conn, "exp", tmp_path).read_text()
    yield text, conn, tmp_path
    conn.close()


def test_report_has_setup_figures_and_results(report):
    text, _, tmp_path = report
    assert (tmp_path / "report.md").is_file()
    assert "## Setup" in text and "| model | tiny-test-model |" in text
    assert "| synthetic | 1 | 400–1200 | 4 |" in text
    for name in PLOT_NAMES:
        assert f"](plots/{name})" in text
    assert "| snapkv (0.5) | 1 | 400–1200 | 4 | 0.250 [" in text


def test_findings_match_the_data(report):
    text, conn, _ = report
    delta = conn.execute(
        "SELECT b.acc_delta FROM bin_stats b JOIN runs r USING (run_id) "
        "WHERE r.kv_policy = 'snapkv' AND b.bin_idx = 1").fetchone()[0]
    assert delta == pytest.approx(-0.25)
    assert f"snapkv loses {100 * abs(delta):.1f} points of accuracy" in text
    assert "(50% less, measured)" in text  # 1 MiB vs 2 MiB of KV per request
    assert re.search(r"\| snapkv \(0\.5\) \| 8 \| 1 \| ENGINE_ERROR: 1 \|", text)


def test_report_never_prints_secrets(report):
    text, _, _ = report
    assert SECRET not in text


def test_random_model_warning_and_missing_plots(dbh, tmp_path):
    conn, _ = dbh.build_experiment(tmp_path / "x.sqlite", model_name="builtin:tiny-random")
    cfg = AnalysisConfig(n_bootstrap=100)
    compute_bin_stats(conn, "exp", cfg)
    write_transitions(conn, "exp", cfg)
    text = build_report(conn, "exp", tmp_path).read_text()
    assert "accuracy measures nothing" in text.lower()
    assert "`plots/acc_vs_len.png` is missing" in text


def test_no_accuracy_finding_when_the_full_cache_answers_nothing(dbh, tmp_path):
    """Every Δ is 0 when nothing is right: no setting may be called matching or safe."""
    wrong = [dbh.Outcome(0.0, "x")] * 6
    runs = {("full", 1.0): [wrong] * 2, ("snapkv", 0.2): [wrong] * 2}
    conn, _ = dbh.build_experiment(tmp_path / "x.sqlite", runs=runs,
                                   bins=[(100, 200), (200, 400)])
    cfg = AnalysisConfig(n_bootstrap=100)
    compute_bin_stats(conn, "exp", cfg)
    write_transitions(conn, "exp", cfg)
    text = build_report(conn, "exp", tmp_path).read_text()
    assert "No accuracy finding: the full cache answers no example correctly" in text
    assert "Safe budget" not in text and "matches the full cache" not in text
    assert text.count("No accuracy finding") == 2  # the summary's headline and the finding


def test_report_before_analyze_is_bad_input(paired_db, tmp_path):
    conn, _ = paired_db
    with pytest.raises(BadInput, match="run `analyze` first"):
        build_report(conn, "exp", tmp_path)


def test_detected_transition_is_explained(dbh, tmp_path):
    """Four bins of 20; at bin 2 the compressed run fails 8 times yet keeps 60% accuracy."""
    ok = [dbh.Outcome(1.0, "a")] * 20
    spike = [dbh.Outcome(0.0, "", failure="EMPTY")] * 8 + [dbh.Outcome(1.0, "a")] * 12
    runs = {("full", 1.0): [ok] * 4, ("snapkv", 0.2): [ok, ok, spike, ok]}
    bins = [(100, 200), (200, 400), (400, 800), (800, 1600)]
    conn, ids = dbh.build_experiment(tmp_path / "x.sqlite", runs=runs, bins=bins)
    cfg = AnalysisConfig(n_bootstrap=200)
    compute_bin_stats(conn, "exp", cfg)
    write_transitions(conn, "exp", cfg)
    row = conn.execute("SELECT transition_bin_start, transition_bin_end FROM transition_summary "
                       "WHERE run_id = ?", (ids[("snapkv", 0.2)],)).fetchone()
    assert tuple(row) == (2, 2)
    text = build_report(conn, "exp", tmp_path).read_text()
    assert "| snapkv (0.2) | transition | 2–2 |" in text
    assert ("Instability rises before accuracy collapses in bin 2 (400–800 tokens): "
            "changed-answer rate, failure rate, flip rate above the reference bins 0–1 "
            "(boschloo exact one sided; strongest: ") in text
    assert "BH-adjusted p = " in text
    # the power line: what "no zone" could mean at this size
    assert "With 20 examples per bin, the zones planted in the power suite are found" in text
    assert "(bins 3-4: only failures rise, 0.02 to 0.25) of the time" in text
    assert "accuracy interval wilson;" in text and "Δ test mcnemar_exact" in text
    assert "EMPTY: 8" in text


def test_memory_that_did_not_fall_with_the_budget_is_flagged():
    from kv_transition.report.build import _memory_findings

    runs = [{"run_id": 1, "is_baseline": True, "dataset_id": "d", "label": "full"},
            {"run_id": 2, "is_baseline": False, "dataset_id": "d", "label": "ada (0.5)",
             "kv_budget": 0.5},
            {"run_id": 3, "is_baseline": False, "dataset_id": "d", "label": "snapkv (0.5)",
             "kv_budget": 0.5}]
    d = {"runs": runs, "stats": {2: [], 3: []}, "baselines": {"d": runs[0]},
         "memory": {1: {"kv_mib": 2.0}, 2: {"kv_mib": 2.0}, 3: {"kv_mib": 1.05}}}
    text = "\n".join(_memory_findings(d))
    assert "ada (0.5) keeps 100% of the full cache's bytes at budget 0.5" in text
    assert "snapkv (0.5) keeps" not in text and "snapkv (0.5) holds 1.05 MiB" in text


def test_layers_compressed_text():
    from collections import Counter

    from kv_transition.report.build import layers_text

    assert layers_text(Counter({((), 4): 3})) == "none"
    assert layers_text(Counter({((0, 1, 2, 3), 4): 3})) == "all 4"
    assert layers_text(Counter({((5, 11, 17), 18): 9, ((5,), 18): 1})) == \
        "5, 11, 17 of 18 (1 requests differ)"
    assert layers_text(Counter({((0, 1, 2, 5), 8): 1})) == "0–2, 5 of 8"
