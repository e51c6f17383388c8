"""Presses on a model with sliding-window layers (kv/bounded.py), on a tiny random Gemma 3
text model built locally: window 32, layers 0-2 sliding, layer 3 full attention."""

import pytest
import torch

from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.engines.session import uneven_layers
from kv_transition.engines.shared_prefill import generate_settings
from kv_transition.kv.bounded import (applying, bounded_share, extend_masks, full_layer_tokens,
                                      new_cache, sliding_layer_ids)
from kv_transition.kv.registry import make_press
from kv_transition.settings import ModelConfig, PressConfig

CONTEXT = " ".join(["the brown horse kept the table near the river."] * 12)  # > the window


@pytest.fixture(scope="module")
def gemma(tiny_gemma3, models_root):
    return HFEngine(ModelConfig(name=str(tiny_gemma3), device="cpu", dtype="float32"),
                    PressConfig(), models_root)


def ask(engine, policy, budget, query_aware=False):
    return engine.generate(GenerationRequest(context=CONTEXT, question="what did the horse keep?",
                                             max_tokens=4, policy=policy, budget=budget,
                                             query_aware=query_aware))


def test_layer_arithmetic_follows_the_config(gemma):
    cfg = gemma.model.config
    assert sliding_layer_ids(cfg) == [0, 1, 2]
    assert full_layer_tokens(cfg, 100) == [31, 31, 31, 100]  # DynamicSlidingWindowLayer: w - 1
    assert full_layer_tokens(cfg, 10) == [10, 10, 10, 10]
    assert bounded_share(cfg, 100) == pytest.approx(93 / 193)
    assert bounded_share(gemma.model.config.__class__(layer_types=["full_attention"] * 2,
                                                      num_hidden_layers=2), 100) == 0.0


def test_full_cache_accounting_is_exact_with_sliding_layers(gemma):
    result = ask(gemma, "full", 1.0)
    notes = result.notes
    assert notes["context_tokens"] > 64
    assert notes["kv_ratio"] == pytest.approx(1.0)  # measured bytes == the layer-aware full size
    assert notes["kv_ratio_true"] == pytest.approx(2.0)  # float32 against a 16-bit reference
    assert notes["layers_compressed"] == []
    assert notes["kv_layer_tokens"][:3] == [31, 31, 31]


@pytest.mark.parametrize("policy", ["snapkv", "streamingllm", "knorm"])
def test_a_press_compresses_only_the_full_attention_layer(gemma, policy):
    notes = ask(gemma, policy, 0.5).notes
    assert notes["layers_compressed"] == [3]
    assert notes["kv_layer_tokens"][:3] == [31, 31, 31]
    n = notes["context_tokens"] + notes["question_tokens"]
    assert notes["kv_layer_tokens"][3] < 0.6 * n
    assert 0 < notes["kv_bounded_share"] < 1
    # the best a press can do: the sliding layers' share stays, the rest shrinks by half
    assert notes["kv_ratio"] == pytest.approx(
        notes["kv_bounded_share"] + (1 - notes["kv_bounded_share"]) *
        notes["kv_layer_tokens"][3] / n, abs=1e-6)


def test_without_the_sliding_layers_left_out_kvpress_compresses_them(gemma):
    press, _ = make_press("snapkv", 0.5, 120, {})
    ids = torch.arange(5, 125).unsqueeze(0)
    from transformers import DynamicCache

    # kvpress alone runs only with a plain cache (a config-built one fails inside attention)
    plain, bounded = DynamicCache(), new_cache(gemma.model.config)
    with torch.inference_mode():
        with press(gemma.model):  # kvpress alone on Gemma3ForCausalLM: every layer
            gemma.model(input_ids=ids, past_key_values=plain, use_cache=True)
        with applying(press, gemma.model):
            gemma.model(input_ids=ids, past_key_values=bounded, use_cache=True)
    assert [layer.keys.shape[-2] for layer in bounded.layers] == [31, 31, 31, 60]
    assert [layer.keys.shape[-2] for layer in plain.layers] == [60, 60, 60, 60]


@pytest.mark.parametrize("policy", ["snapkv", "streamingllm"])
def test_the_question_after_a_compressed_context_sees_only_what_came_before(gemma, policy):
    # The model numbers the question from the sliding layers' count of positions while the
    # compressed layer holds fewer: its default mask would let a question token see the ones
    # after it. One forward with per-type masks must match feeding it one token at a time.
    req = GenerationRequest(context=CONTEXT, question="what did the horse keep?", max_tokens=1)
    ctx, q = gemma.encode(req)
    assert not uneven_layers(gemma.prefill(ctx, "full", 1.0).cache)
    stepwise = gemma.prefill(ctx, policy, 0.5)
    assert uneven_layers(stepwise.cache)
    positions = torch.arange(stepwise.n_positions, stepwise.n_positions + q.shape[1]).unsqueeze(0)
    steps = torch.stack([gemma.step(stepwise, token) for token in q[0].tolist()])

    def one_forward(masked: bool) -> torch.Tensor:
        state = gemma.prefill(ctx, policy, 0.5)
        masks = extend_masks(gemma.model, state.cache, q.shape[1], positions) if masked else None
        with torch.inference_mode():
            return gemma.model(input_ids=q, past_key_values=state.cache, position_ids=positions,
                               attention_mask=masks).logits[0]

    assert torch.allclose(one_forward(True), steps, atol=1e-4)
    assert not torch.allclose(one_forward(False)[0], steps[0], atol=1e-4)  # the leak
    state = gemma.prefill(ctx, policy, 0.5)
    gemma.extend(state, q)  # what the engine does
    assert torch.allclose(state.next_logits, steps[-1], atol=1e-4)
    state = gemma.prefill(ctx, policy, 0.5)  # what the perplexity canary does: every row
    assert torch.allclose(gemma.feed(state, q, all_logits=True), steps, atol=1e-4)


def test_the_full_cache_answers_as_one_forward_over_the_whole_prompt(gemma):
    req = GenerationRequest(context=CONTEXT, question="what did the horse keep?", max_tokens=1)
    ctx, q = gemma.encode(req)
    state = gemma.prefill(ctx, "full", 1.0)
    gemma.extend(state, q)
    whole = gemma.model(input_ids=torch.cat([ctx, q], 1)).logits[0, -1]
    assert torch.allclose(state.next_logits, whole, atol=1e-4)


def test_shared_prefill_falls_back_to_a_fresh_prefill_per_setting(gemma):
    req = GenerationRequest(context=CONTEXT, question="what did the horse keep?", max_tokens=3)
    settings = [("full", 1.0), ("snapkv", 0.5), ("streamingllm", 0.5)]
    shared = generate_settings(gemma, req, settings)
    for policy, budget in settings:
        fresh = ask(gemma, policy, budget)
        assert shared[(policy, budget)].raw["token_ids"][:3] == fresh.raw["token_ids"][:3]
        assert "shared_prefill" not in shared[(policy, budget)].notes
        assert shared[(policy, budget)].notes["layers_compressed"] == \
            ([] if policy == "full" else [3])
