"""The CLI end to end on the builtin tiny model: real SQLite, real presses, real files."""

import json
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from kvt_testkit import write_config
from kv_transition.cli import app
from kv_transition.db.schema import TABLES

PLOTS = ("acc_vs_len.png", "std_vs_len.png", "failrate_vs_len.png", "latency_vs_len.png",
         "mem_vs_budget.png")


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args), "--no-progress"] if args[0] in ("run", "all")
                              else list(map(str, args)))


def db_file(home, exp="tiny"):
    return home / "runs" / exp / "kv_transition.sqlite"


def row_counts(path):
    conn = sqlite3.connect(path)
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def dump(path):
    conn = sqlite3.connect(path)
    return [line for line in conn.iterdump()]


def test_all_fills_every_table_and_writes_artifacts(home, tiny_config):
    result = cli("all", "-c", tiny_config)
    assert result.exit_code == 0, result.output
    counts = row_counts(db_file(home))
    assert all(n > 0 for n in counts.values()), counts
    # baseline + 2 policies x 1 compressed budget, 2 bins x 3 examples each
    assert counts["runs"] == 3 and counts["requests"] == 3 * 6 == counts["responses"]
    run_dir = home / "runs" / "tiny"
    for name in PLOTS:
        assert (run_dir / "plots" / name).stat().st_size > 1000
    report = (run_dir / "report.md").read_text()
    assert "acc_vs_len.png" in report and "snapkv" in report
    manifests = list((home / "data" / "processed").glob("*/manifest.json"))
    manifest = json.loads(manifests[0].read_text())
    assert manifest["schema_version"] == 1 and manifest["prompt_template_hash"]
    assert len(manifest["entries"]) == 6 and len(manifest["bins"]) == 2


def test_all_twice_adds_no_rows(home, tiny_config):
    assert cli("all", "-c", tiny_config).exit_code == 0
    before = row_counts(db_file(home))
    assert cli("all", "-c", tiny_config).exit_code == 0
    assert row_counts(db_file(home)) == before


def test_phases_run_alone_in_order(home, tiny_config):
    for phase in ("prepare", "run", "score", "analyze", "report"):
        result = cli(phase, "-c", tiny_config)
        assert result.exit_code == 0, (phase, result.output)
    assert (home / "runs" / "tiny" / "report.md").is_file()


def test_adding_a_budget_later_only_runs_the_new_setting(home, tiny_config):
    assert cli("all", "-c", tiny_config).exit_code == 0
    before = row_counts(db_file(home))
    assert cli("run", "-c", tiny_config, "--set", "kv.budgets=[1.0,0.5,0.25]").exit_code == 0
    after = row_counts(db_file(home))
    assert after["runs"] == before["runs"] + 2
    assert after["responses"] == before["responses"] + 2 * 6


def test_killed_run_resumes_without_duplicates(home, tiny_config):
    assert cli("prepare", "-c", tiny_config).exit_code == 0
    path = db_file(home)
    cmd = [sys.executable, "-m", "kv_transition", "run", "-c", str(tiny_config), "--no-progress",
           "--set", "decoding.max_tokens=24"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    answered = 0
    while time.time() < deadline and proc.poll() is None:
        answered = sqlite3.connect(path).execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        if answered >= 4:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert 0 < answered < 18, "the run finished before it could be killed"
    result = cli("run", "-c", tiny_config, "--set", "decoding.max_tokens=24")
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(path)
    per_pair = conn.execute(
        "SELECT r.run_id, r.entry_id, COUNT(s.response_id) FROM requests r "
        "LEFT JOIN responses s USING(request_id) GROUP BY r.run_id, r.entry_id").fetchall()
    assert len(per_pair) == 18 and all(n == 1 for _, _, n in per_pair)


def test_python_dash_m_entry_point(home, tiny_config):
    out = subprocess.run([sys.executable, "-m", "kv_transition", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "prepare" in out.stdout


# -- bad input: exit 2, a message naming what is wrong, the database as it was ---------------

def _prepared(home, tiny_config):
    assert cli("prepare", "-c", tiny_config).exit_code == 0
    return dump(db_file(home))


@pytest.mark.parametrize("override, message", [
    ("kv.budgets=[1.0,1.5]", "kv.budgets"),
    ("kv.policies=[snapkv,nope]", "unknown policy 'nope'"),
    ("kv.window=3", "kv.window: unknown key"),
    ("model.name=/does/not/exist", "model.name '/does/not/exist'"),
])
def test_bad_input_exits_2_and_leaves_db_unchanged(home, tiny_config, override, message):
    before = _prepared(home, tiny_config)
    result = cli("run", "-c", tiny_config, "--set", override)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert dump(db_file(home)) == before


def test_bad_config_before_any_database_exists(home, tiny_config):
    result = cli("all", "-c", tiny_config, "--set", "dataset.lenghts=[100]")
    assert result.exit_code == 2 and "dataset.lenghts" in result.output
    assert not db_file(home).exists()


def test_missing_and_malformed_longbench_files(home, tmp_path):
    lb = {"name": "longbench", "task": "hotpotqa", "path": str(tmp_path / "missing.jsonl"),
          "n_per_bin": 2}
    cfg = write_config(tmp_path / "lb.yaml", dataset=lb)
    result = cli("prepare", "-c", cfg)
    assert result.exit_code == 2 and "missing.jsonl" in result.output
    bad = tmp_path / "bad.jsonl"
    good = {"input": "q?", "context": "some text", "answers": ["a"], "length": 2,
            "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "x1"}
    bad.write_text(json.dumps(good) + "\n" + "{not json\n")
    cfg = write_config(tmp_path / "lb.yaml", dataset={**lb, "path": str(bad)})
    result = cli("prepare", "-c", cfg)
    assert result.exit_code == 2 and "line 2" in result.output
    assert not db_file(home).exists()


def test_unreachable_endpoint_exits_2_without_runs(home, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write_config(tmp_path / "oa.yaml", engine={
        "kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
        "request": {"timeout_s": 2, "max_retries": 0}})
    assert cli("prepare", "-c", cfg).exit_code == 0
    before = dump(db_file(home))
    result = cli("run", "-c", cfg)
    assert result.exit_code == 2 and "unreachable" in result.output
    assert dump(db_file(home)) == before


def test_unreachable_endpoint_leaves_no_open_connections(tmp_path):
    # a fresh interpreter, so its exit shows whatever the error path left open
    cfg = write_config(tmp_path / "oa.yaml", engine={
        "kind": "openai", "base_url": "http://127.0.0.1:9/v1"})
    code = ("from pathlib import Path; from kv_transition.settings import load_settings; "
            "from kv_transition.engines.factory import make_engine; "
            f"make_engine(load_settings(Path({str(cfg)!r})), Path('.'), [('full', 1.0)])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert "unreachable" in proc.stderr and "Unclosed" not in proc.stderr


@pytest.mark.parametrize("override", ["dataset.n_per_bin=2", "dataset.lengths=[96,160]",
                                      "binning.n_bins=1"])
def test_changing_the_dataset_under_an_experiment_is_refused(home, tiny_config, override):
    before = _prepared(home, tiny_config)
    result = cli("prepare", "-c", tiny_config, "--set", override)
    assert result.exit_code == 2 and "already holds dataset" in result.output
    assert dump(db_file(home)) == before
