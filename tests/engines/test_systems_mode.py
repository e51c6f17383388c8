"""Systems mode: a random-weight model of a named shape, for latency and memory at scale."""

import pytest

from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.engines.shapes import SHAPES, shape_config
from kv_transition.errors import BadInput
from kv_transition.settings import ModelConfig, PressConfig


def test_random_init_needs_a_known_shape():
    with pytest.raises(ValueError, match="model.shape"):
        ModelConfig(init="random")
    with pytest.raises(ValueError, match="model.shape"):
        ModelConfig(init="random", shape="gpt-17")


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_have_the_published_kv_layout(name):
    cfg = shape_config(name)
    heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert cfg.num_attention_heads % heads == 0 and head_dim * cfg.num_attention_heads >= cfg.hidden_size // 2
    if name == "llama-3.1-8b":  # 2 x 32 layers x 8 heads x 128 x 2 bytes (bf16) per token
        assert 2 * cfg.num_hidden_layers * heads * head_dim * 2 == 131072


def test_unknown_shape_is_bad_input():
    with pytest.raises(BadInput, match="allowed"):
        shape_config("gpt-17")


def test_random_model_runs_and_measures_kv(models_root):
    engine = HFEngine(ModelConfig(init="random", shape="tiny-llama", device="cpu"),
                      PressConfig(), models_root)
    assert engine.model.config.num_hidden_layers == SHAPES["tiny-llama"]["num_hidden_layers"]
    full = engine.generate(GenerationRequest(context="the river ran " * 100, question="what ?",
                                             max_tokens=3))
    cfg = engine.model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * \
        (cfg.hidden_size // cfg.num_attention_heads) * 4  # float32
    assert full.kv_bytes == per_token * full.notes["context_tokens"] + \
        per_token * full.notes["question_tokens"]


def test_systems_mode_report_hides_accuracy(home, tiny_config):
    from typer.testing import CliRunner

    from kv_transition.cli import app

    result = CliRunner().invoke(app, ["all", "-c", str(tiny_config), "--no-progress",
                                      "--set", "model.init=random", "--set", "model.shape=tiny-llama"])
    assert result.exit_code == 0, result.output
    report = (home / "runs" / "tiny" / "report.md").read_text()
    assert "Systems mode" in report and "random:tiny-llama" in report
    assert "## Results" not in report and "acc_vs_len.png" not in report
    assert "## Transition zones" not in report and "mem_vs_budget.png" in report
