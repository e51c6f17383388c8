"""One prefill for many budgets must give exactly what separate prefills give."""

import pytest
import torch

from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.engines.shared_prefill import can_share, generate_settings, prefill_settings
from kv_transition.policy.spec import POLICIES
from kv_transition.settings import ModelConfig, PressConfig

CONTEXT = " ".join(f"the {w} river ran past the quiet town ." for w in
                   ["old", "cold", "wide", "slow", "dark", "bright"] * 6)
SHAREABLE = sorted(p for p in POLICIES if can_share(p) and p != "full")
BUDGETS = (0.75, 0.5, 0.25, 0.1)


@pytest.fixture(scope="module")
def engine(models_root):
    return HFEngine(ModelConfig(device="cpu", dtype="float32"), PressConfig(), models_root)


def _req(**kw):
    return GenerationRequest(**{**dict(context=CONTEXT, question="what ran past the town ?",
                                       max_tokens=8), **kw})


@pytest.mark.parametrize("policy", SHAREABLE)
def test_same_kept_keys_as_a_fresh_prefill(engine, policy):
    ctx, _ = engine.encode(_req())
    engine.use_attention_for(policy)
    states, _, _ = prefill_settings(engine, ctx, [(policy, b) for b in BUDGETS])
    for budget in BUDGETS:
        fresh = engine.prefill(ctx, policy, budget)
        for shared_layer, fresh_layer in zip(states[(policy, budget)].cache.layers, fresh.cache.layers):
            assert torch.equal(shared_layer.keys, fresh_layer.keys)
            assert torch.equal(shared_layer.values, fresh_layer.values)


@pytest.mark.parametrize("query_aware", [False, True])
def test_same_greedy_tokens_for_the_whole_grid(engine, query_aware):
    grid = [("full", 1.0)] + [(p, b) for p in SHAREABLE for b in (0.5, 0.1)]
    shared = generate_settings(engine, _req(query_aware=query_aware), grid)
    for policy, budget in grid:
        fresh = engine.generate(_req(query_aware=query_aware, policy=policy, budget=budget))
        got = shared[(policy, budget)]
        assert got.raw["token_ids"] == fresh.raw["token_ids"], (policy, budget)
        assert got.text == fresh.text and got.kv_bytes == fresh.kv_bytes
        assert got.notes["shared_prefill"] is True


def test_budgets_differ_so_the_check_can_fail(engine):
    ctx, _ = engine.encode(_req())
    states, _, _ = prefill_settings(engine, ctx, [("snapkv", 0.5), ("snapkv", 0.25)])
    sizes = {s: st.cache.layers[0].keys.shape[-2] for s, st in states.items()}
    assert sizes[("snapkv", 0.5)] > sizes[("snapkv", 0.25)]


def test_a_press_failure_is_a_request_failure_on_both_paths(models_root):
    from kv_transition.engines.base import EngineError

    # StreamingLLM refuses a context no longer than its sinks: an input the press cannot handle
    engine = HFEngine(ModelConfig(device="cpu", dtype="float32"), PressConfig(n_sink=100000),
                      models_root)
    req = _req(policy="streamingllm", budget=0.5)
    with pytest.raises(EngineError) as fresh:
        engine.generate(req)
    with pytest.raises(EngineError) as shared:
        generate_settings(engine, req, [("full", 1.0), ("streamingllm", 0.5)])
    assert not fresh.value.transient and not shared.value.transient
    assert "AssertionError" in str(fresh.value) and "AssertionError" in str(shared.value)
