"""The hf engine on the builtin tiny model: compression really happens inside the model."""

import pytest
import torch

from kv_transition.engines.base import EngineError, GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.engines.session import cache_bytes
from kv_transition.errors import BadInput
from kv_transition.settings import ModelConfig, PressConfig

CONTEXT = " ".join(["the old river ran past the quiet town ."] * 30)


@pytest.fixture(scope="module")
def engine(models_root):
    return HFEngine(ModelConfig(device="cpu", dtype="float32"), PressConfig(), models_root)


def _req(**kw):
    base = dict(context=CONTEXT, question="what ran past the town ?", max_tokens=6)
    return GenerationRequest(**{**base, **kw})


def test_full_cache_matches_transformers_generate(engine):
    ctx, q = engine.encode(_req())
    ids = torch.cat([ctx, q], dim=1)
    expected = engine.model.generate(ids, max_new_tokens=6, do_sample=False,
                                     attention_mask=torch.ones_like(ids))[0, ids.shape[1]:]
    ours = engine.generate(_req(policy="full", budget=1.0))
    assert ours.raw["token_ids"] == expected.tolist()[: len(ours.raw["token_ids"])]


def test_split_and_joint_prefill_agree_at_full_cache(engine):
    split = engine.generate(_req(query_aware=False))
    joint = engine.generate(_req(query_aware=True))
    assert split.raw["token_ids"] == joint.raw["token_ids"]


@pytest.mark.parametrize("policy", ["snapkv", "streamingllm", "tova", "knorm", "h2o",
                                    "expected_attention", "pyramidkv", "random"])
def test_budget_shrinks_the_measured_cache(engine, policy):
    full = engine.generate(_req())
    half = engine.generate(_req(policy=policy, budget=0.5))
    ctx, q = engine.encode(_req())
    n_ctx, n_q = ctx.shape[1], q.shape[1]
    assert full.kv_bytes == full.notes["kv_bytes_uncompressed"]
    # the context is halved, the question (asked after compression) is kept whole
    expected = full.kv_bytes * (round(n_ctx * 0.5) + n_q) / (n_ctx + n_q)
    assert half.kv_bytes == pytest.approx(expected, rel=0.03)
    assert half.raw["applied"]["compression_ratio"] == pytest.approx(0.5)


def test_streamingllm_keeps_sinks_and_recent_tokens(engine):
    ctx, _ = engine.encode(_req())
    full = engine.prefill(ctx, "full", 1.0)
    kept = engine.prefill(ctx, "streamingllm", 0.25)
    k_full, k_kept = full.cache.layers[0].keys[0, 0], kept.cache.layers[0].keys[0, 0]
    n_ctx, n_keep = k_full.shape[0], k_kept.shape[0]
    assert n_keep == round(n_ctx * 0.25)
    # kvpress keeps top-scored rows in score order, so locate each kept key in the full cache
    dist = torch.cdist(k_kept, k_full)
    kept_positions = set(dist.argmin(dim=1).tolist())
    assert torch.all(dist.min(dim=1).values < 1e-3)  # cdist is a matmul: ~1e-4 noise
    assert kept_positions == set(range(4)) | set(range(n_ctx - (n_keep - 4), n_ctx))
    assert cache_bytes(kept.cache)[0] < cache_bytes(full.cache)[0]


def test_prompt_longer_than_the_model_is_a_request_failure(engine):
    with pytest.raises(EngineError) as info:
        engine.generate(_req(context=CONTEXT * 200))
    assert not info.value.transient and "exceeds" in str(info.value)


def test_missing_model_path_is_bad_input(models_root, tmp_path):
    with pytest.raises(BadInput, match="cannot load it offline|no config.json"):
        HFEngine(ModelConfig(name=str(tmp_path / "nope")), PressConfig(), models_root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no config.json"):
        HFEngine(ModelConfig(name=str(tmp_path / "empty")), PressConfig(), models_root)


def test_telemetry_fields_are_filled(engine):
    r = engine.generate(_req(policy="snapkv", budget=0.5))
    assert r.latency_s >= r.ttfb_s >= r.prefill_s > 0
    assert r.decode_s == pytest.approx(r.latency_s - r.ttfb_s)
    assert r.notes["peak_mem_scope"] == "process" and r.peak_mem_mb > 0
    assert r.completion_tokens == len(r.raw["token_ids"]) <= 6


def test_each_request_records_the_layers_its_policy_compressed(engine):
    full = engine.generate(_req())
    half = engine.generate(_req(policy="snapkv", budget=0.5))
    n_layers = engine.model.config.num_hidden_layers
    assert full.notes["layers_compressed"] == []
    assert half.notes["layers_compressed"] == list(range(n_layers))
    assert sum(half.notes["kv_layer_bytes"]) == half.kv_bytes
    assert all(t < full.notes["kv_layer_tokens"][0] for t in half.notes["kv_layer_tokens"])


def test_model_threads_sets_torchs_cpu_threads(models_root):
    before = torch.get_num_threads()
    try:
        one = HFEngine(ModelConfig(device="cpu", dtype="float32", threads=1), PressConfig(),
                       models_root)
        assert torch.get_num_threads() == 1
        # every answer records the threads it ran with
        assert one.generate(_req(max_tokens=1)).notes["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)
