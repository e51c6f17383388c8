"""`kv-transition novelty` end to end on the builtin tiny model, with tiny settings."""

import sqlite3

from typer.testing import CliRunner

import helpers_db
from kvt_testkit import write_config
from kv_transition.analysis.aggregate import compute_bin_stats
from kv_transition.analysis.transition import write_transitions
from kv_transition.cli import app
from kv_transition.report.build import build_report
from kv_transition.settings import AnalysisConfig

TABLES = ("novelty_runs", "novelty_tokens", "novelty_kv", "novelty_series", "novelty_stats",
          "novelty_compression")
PLOTS = ("novelty_timeseries.png", "novelty_distribution.png", "spike_analysis.png",
         "novelty_by_layer.png", "novelty_vs_policy.png")
PROBES = {"prompts": ["transition_heavy", "code_generation"], "layers": [0, -1],
          "max_new_tokens": 24, "temperature": 1.0, "max_positions": 512}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def counts(path):
    conn = sqlite3.connect(path)
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def dump(path):
    return list(sqlite3.connect(path).iterdump())


def test_novelty_writes_tables_figures_and_report_and_reruns_idempotently(home, tmp_path):
    cfg = write_config(tmp_path / "nov.yaml", probes=PROBES)
    result = cli("novelty", "-c", cfg)
    assert result.exit_code == 0, result.output
    run_dir = home / "runs" / "tiny"
    db_path = run_dir / "kv_transition.sqlite"
    n = counts(db_path)
    assert n["novelty_runs"] == 2 and n["novelty_kv"] == 0  # tensors went to .npz files
    # 2 prompts x 2 layers x (2 heads + all) x 4 metrics x (snapkv, streamingllm) x budget 0.5
    assert n["novelty_compression"] == 2 * 2 * 3 * 4 * 2
    # per prompt: 2 layers x 3 units x 4 geometric metrics + 3 predictive
    assert n["novelty_series"] == n["novelty_stats"] == 2 * (2 * 3 * 4 + 3)
    conn = sqlite3.connect(db_path)
    (n_positions,) = conn.execute(
        "SELECT SUM(n_prompt_tokens + n_generated) FROM novelty_runs WHERE status='complete'"
    ).fetchone()
    assert n["novelty_tokens"] == n_positions
    for prompt in PROBES["prompts"]:
        for layer in (0, 1):
            assert (run_dir / "novelty" / "kv" / prompt / f"layer_{layer:02d}.npz").is_file()
    for name in PLOTS:
        assert (run_dir / "novelty" / name).stat().st_size > 1000
    report = (run_dir / "novelty" / "novelty_report.md").read_text()
    assert "mean nothing about real models" in report
    for hypothesis in ("Heavy tails", "Bursty spikes", "semantic transitions", "Autocorrelation"):
        line = next(l for l in report.splitlines() if hypothesis in l and l.startswith("|"))
        assert any(v in line for v in ("supported", "weakened", "inconclusive"))
    assert "streamingllm at budget 0.5 keeps high-novelty positions" in report

    again = cli("novelty", "-c", cfg)
    assert again.exit_code == 0 and "2 already done" in again.output
    assert counts(db_path) == n

    shorter = cli("novelty", "-c", cfg, "--set", "probes.max_new_tokens=8")
    assert shorter.exit_code == 0 and "2 prompt(s) probed" in shorter.output  # settings changed
    rows = sqlite3.connect(db_path).execute("SELECT n_generated FROM novelty_runs").fetchall()
    assert len(rows) == 2 and all(g <= 8 for (g,) in rows)  # replaced, not added

    before = dump(db_path)
    for override, message in (("probes.layers=[7]", "probes.layers: 7 is out of range"),
                              ("probes.prompts=[nope]", "unknown prompt 'nope'"),
                              ("probes.max_positions=10", "probes.max_positions 10")):
        bad = cli("novelty", "-c", cfg, "--set", override)
        assert bad.exit_code == 2, bad.output
        assert message in bad.output and "Traceback" not in bad.output
        assert dump(db_path) == before




def test_main_report_links_the_novelty_findings_and_db_store(home, tmp_path):
    db_path = tmp_path / "x.sqlite"
    conn, _ = helpers_db.build_experiment(db_path)  # a scored experiment "exp"
    compute_bin_stats(conn, "exp", AnalysisConfig(n_bootstrap=200))
    write_transitions(conn, "exp", AnalysisConfig(n_bootstrap=200))
    run_dir = home / "runs" / "exp"
    assert "KV novelty probes" not in build_report(conn, "exp", run_dir).read_text()
    probes = {**PROBES, "prompts": ["mixed_content"], "store": "db", "max_new_tokens": 16,
              "target": "hidden"}
    cfg = write_config(tmp_path / "nov.yaml", probes=probes, output={"exp_group_id": "exp"},
                       db={"path": str(db_path)})
    result = cli("novelty", "-c", cfg)
    assert result.exit_code == 0, result.output
    n = counts(db_path)
    assert n["novelty_kv"] > 0 and not (run_dir / "novelty" / "kv").exists()
    # hidden states: one vector per layer and position, so only the all-heads unit
    heads = {r[0] for r in sqlite3.connect(db_path).execute("SELECT head FROM novelty_series")}
    assert heads == {-1}
    report = build_report(conn, "exp", run_dir).read_text()
    assert "## KV novelty probes" in report
    assert "(novelty/novelty_report.md)" in report and "Heavy tails" in report
    assert (run_dir / "novelty" / "novelty_report.md").is_file()


def test_pinned_novelty_config_validates():
    from kvt_testkit import REPO
    from kv_transition.settings import load_settings

    s = load_settings(REPO / "config" / "experiments" / "novelty.yaml")
    assert s.probes.layers == [0, -1] and s.probes.target == "keys"
    assert len(s.probes.prompts) == 5 and s.kv.budgets == [0.5, 0.2]
