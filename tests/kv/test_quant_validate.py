"""`kv-transition quant-validate`: the memory table, the model check, and a broken ordering."""

import sqlite3

import pytest
from typer.testing import CliRunner

from kv_transition.cli import app
from kv_transition import quant_validate as validate
from kvt_testkit import write_config

MODEL_ARGS = ["--lengths", "96"]


def cli(*args):
    return CliRunner().invoke(app, ["quant-validate", *map(str, args)])


def test_memory_only_table_matches_hand_figures():
    result = cli("--memory-only")
    assert result.exit_code == 0, result.output
    # payload and true ratios at 512 / 4096 / 32768 tokens, head_dim 128, G 32, R 128
    assert "| int4 | 0.2500 | 0.3125 | 0.3125 | 0.3125 |" in result.output
    assert "| kivi-k2v4 | 0.1875 | 0.4375 | 0.2734 | 0.2529 |" in result.output
    assert "| fp16 | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in result.output


def test_memory_only_options_and_their_errors():
    result = cli("--memory-only", "--head-dim", 64, "--group-size", 64, "--lengths", "128")
    assert result.exit_code == 0 and "| int8 | 0.5000 | 0.5312 |" in result.output
    for args, message in ((("--head-dim", 12), "--head-dim 12"),
                          (("--group-size", 12), "--group-size"),
                          (("--lengths", "5,x"), "--lengths"),
                          (("--residual", -1), "--residual")):
        bad = cli("--memory-only", *args)
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output


def test_model_mode_needs_a_config():
    result = cli()
    assert result.exit_code == 2 and "needs -c CONFIG" in result.output


def _rows(home, exp="tiny"):
    conn = sqlite3.connect(home / "runs" / exp / "kv_transition.sqlite")
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("SELECT * FROM quant_validation")]


def test_model_mode_stores_per_layer_errors_in_order(home, tiny_config):
    result = cli("-c", tiny_config, *MODEL_ARGS)
    assert result.exit_code == 0, result.output
    rows = _rows(home)
    assert {r["mode"] for r in rows} == {"model"}
    policies = {r["policy"] for r in rows}
    assert set(validate.MODEL_POLICIES) == policies
    layers = {r["layer"] for r in rows}
    assert layers == {-1, 0, 1}  # the tiny model's two layers and their aggregate
    agg = {r["policy"]: r for r in rows if r["layer"] == -1}
    errs = [agg[p]["rel_mse_k"] for p in validate.ORDERED]
    assert errs == sorted(errs) and errs[0] < 1e-6 < errs[1]
    assert agg["int4"]["payload_ratio"] == pytest.approx(0.25)
    assert agg["adaptive@0.5"]["true_ratio"] <= 0.5 + 1e-9
    assert all(r["attn_rel_err"] is not None for r in rows)
    report = (home / "runs" / "tiny" / "quant_validate.md").read_text()
    assert "| int2 |" in report and "attn out rel err" in report


def test_a_broken_ordering_fails_loudly_and_keeps_the_results(home, tiny_config, monkeypatch):
    monkeypatch.setattr(validate, "MODEL_POLICIES", validate.ORDERED)  # less work
    real = validate._policy_kv

    def faulty(engine, ids, policy, cfg, ref_cache):  # injected fault: int2 reconstructs as int8
        return real(engine, ids, "int8" if policy == "int2" else policy, cfg, ref_cache)

    monkeypatch.setattr(validate, "_policy_kv", faulty)
    result = cli("-c", tiny_config, *MODEL_ARGS)
    assert result.exit_code == 1
    assert "does not follow fp16 < int8 < int4 < int2" in result.output
    assert "int4" in result.output and "is not below int2" in result.output
    assert len(_rows(home)) > 0
    assert "Ordering check failed" in (home / "runs" / "tiny" / "quant_validate.md").read_text()


def test_memory_only_with_a_config_goes_to_the_database(home, tmp_path):
    cfg = write_config(tmp_path / "q.yaml", kv={"policies": ["int4"], "budgets": [1.0, 0.25],
                                                 "quant": {"group_size": 64}})
    for _ in range(2):  # a rerun replaces the rows instead of adding to them
        assert cli("-c", cfg, "--memory-only", "--lengths", "1024").exit_code == 0
    rows = _rows(home)
    assert {r["mode"] for r in rows} == {"memory"} and {r["group_size"] for r in rows} == {64}
    assert len(rows) == len(validate.MEMORY_POLICIES)
