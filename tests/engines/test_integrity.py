"""The integrity check stops a policy integrated wrongly with the model before it reports."""

import sqlite3

import pytest
from typer.testing import CliRunner

from kvt_testkit import write_config
from kv_transition.cli import app
from kv_transition.engines.hf import HFEngine
from kv_transition.engines.integrity import check_policy, sliding_layers
from kv_transition.settings import ModelConfig, PressConfig


@pytest.fixture(scope="module")
def llama(models_root):
    return HFEngine(ModelConfig(device="cpu", dtype="float32"), PressConfig(), models_root)


@pytest.mark.parametrize("policy", ["snapkv", "streamingllm", "h2o", "knorm"])
def test_a_correct_integration_passes(llama, policy):
    verdict = check_policy(llama, policy)
    assert verdict.passed, verdict.failure()
    assert {c["check"] for c in verdict.checks} == {"bounded_layers", "applied", "mild_budget"}


@pytest.fixture
def kvpress_on_every_layer(monkeypatch):
    """Injected fault: the press entered as kvpress does by itself on Gemma3ForCausalLM, on
    every layer (the integration issue 16 found), instead of through kv/bounded.py."""
    from transformers import DynamicCache

    import kv_transition.kv.bounded as bounded
    import kv_transition.kv.quant.cache as cache

    monkeypatch.setattr(cache, "applying", lambda press, model: press(model))
    monkeypatch.setattr(bounded, "new_cache", lambda config: DynamicCache())


@pytest.mark.parametrize("policy", ["snapkv", "streamingllm", "knorm", "expected_attention"])
def test_gemma3_text_model_passes_with_its_global_layers_compressed(tiny_gemma3, models_root,
                                                                    policy):
    engine = HFEngine(ModelConfig(name=str(tiny_gemma3), device="cpu", dtype="float32"),
                      PressConfig(), models_root)
    verdict = check_policy(engine, policy)
    assert verdict.passed, verdict.failure()
    bounded = next(c for c in verdict.checks if c["check"] == "bounded_layers")
    assert bounded["layers_compressed"] == [3]


def test_sliding_window_layers_compressed_fail_the_check(tiny_gemma3, models_root,
                                                         kvpress_on_every_layer):
    engine = HFEngine(ModelConfig(name=str(tiny_gemma3), device="cpu", dtype="float32"),
                      PressConfig(), models_root)
    assert sliding_layers(engine.model) == [0, 1, 2]
    verdict = check_policy(engine, "snapkv")
    assert not verdict.passed
    failed = [c for c in verdict.checks if not c["passed"]]
    assert [c["check"] for c in failed] == ["bounded_layers"]
    assert "Gemma3ForCausalLM" in verdict.failure() and "[0, 1, 2]" in verdict.failure()
    # on random weights the broken integration barely moves the next-token distribution
    # (README, "The integrity check"): the structural check is what catches it
    assert next(c for c in verdict.checks if c["check"] == "mild_budget")["kl_nats"] < 0.01


def test_a_press_that_compresses_nothing_fails(llama, monkeypatch):
    # injected fault: the engine gets no press for snapkv, as with a press that only works
    # inside kvpress's own pipeline; its answers would be the full cache's, labelled snapkv
    import kv_transition.engines.session as session

    real = session.make_press
    monkeypatch.setattr(session, "make_press", lambda policy, *a: (None, {}) if policy == "snapkv"
                        else real(policy, *a))
    verdict = check_policy(llama, "snapkv")
    assert [c["check"] for c in verdict.checks if not c["passed"]] == ["applied"]
    assert "compressed no layer" in verdict.failure()


def test_run_stops_with_exit_2_and_writes_nothing(tiny_gemma3, tmp_path, home,
                                                  kvpress_on_every_layer):
    cfg = write_config(tmp_path / "g.yaml", model={"name": str(tiny_gemma3), "dtype": "float32",
                                                   "device": "cpu"})
    runner = CliRunner()
    assert runner.invoke(app, ["prepare", "-c", str(cfg)]).exit_code == 0
    db = home / "runs" / "tiny" / "kv_transition.sqlite"
    before = list(sqlite3.connect(db).iterdump())
    result = runner.invoke(app, ["run", "-c", str(cfg), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "integrity check failed for policy 'snapkv' on Gemma3ForCausalLM" in result.output
    assert "Traceback" not in result.output
    assert list(sqlite3.connect(db).iterdump()) == before
    # with the check off, the run goes ahead (and would report the fault as compression)
    off = runner.invoke(app, ["run", "-c", str(cfg), "--no-progress", "--set",
                              "kv.integrity.check=false"])
    assert off.exit_code == 0, off.output
