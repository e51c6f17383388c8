"""The quantized caches: residual window during decoding, and inside the tiny model."""

import pytest
import torch

from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.kv.quant.accounting import kv_shape
from kv_transition.kv.quant.cache import QuantizedKVLayer
from kv_transition.policy.widths import LayerSpec, TensorSpec
from kv_transition.settings import ModelConfig, PressConfig, QuantConfig

R, G, D = 16, 8, 16
KIVI = LayerSpec(TensorSpec(2, "channel", G), TensorSpec(4, "token", G), R)
CONTEXT = " ".join(["the old river ran past the quiet town ."] * 30)
QUESTION = "what ran past the town ?"


def _kv(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, n, D, generator=g), torch.randn(1, 2, n, D, generator=g)


def test_prefill_is_full_precision_then_quantized_after_sealing():
    layer = QuantizedKVLayer(KIVI)
    k, v = _kv(37, 0)
    out_k, out_v = layer.update(k, v)
    assert torch.equal(out_k, k) and torch.equal(out_v, v)  # attention sees exact prefill K/V
    layer.seal()
    assert layer.qkeys.n_tokens == (37 - R) // G * G == 16  # whole key groups leave
    assert layer.qvalues.n_tokens == 37 - R  # values leave token by token
    assert layer.residual_lengths() == (21, R)
    assert layer.get_seq_length() == 37


def test_residual_window_during_decoding():
    layer = QuantizedKVLayer(KIVI)
    k, v = _kv(37, 1)
    layer.update(k, v)
    layer.seal()
    all_k, all_v = k, v
    spills = []
    for step in range(30):
        nk, nv = _kv(1, 100 + step)
        out_k, out_v = layer.update(nk, nv)
        all_k, all_v = torch.cat([all_k, nk], 2), torch.cat([all_v, nv], 2)
        n = all_k.shape[2]
        # the step attends to the new token exactly, and to everything before it
        assert torch.equal(out_k[:, :, -1:], nk) and out_k.shape[2] == n
        r_k, r_v = layer.residual_lengths()
        assert R <= r_k < R + G and r_v == R
        assert layer.qkeys.n_tokens % G == 0 and layer.get_seq_length() == n
        # the most recent tokens are held bit for bit, older ones only approximately
        assert torch.equal(layer.keys, all_k[:, :, n - r_k:])
        assert torch.equal(layer.values, all_v[:, :, -R:])
        hist_k, _ = layer.materialize()
        assert not torch.equal(hist_k[:, :, :G], all_k[:, :, :G])
        assert torch.allclose(hist_k, all_k, atol=2.0)
        spills.append(r_k == R)
    # keys leave the residual a whole group at a time: once it reaches R + G (21 + 3 = 24),
    # then every G steps
    assert [i + 1 for i, spilled in enumerate(spills) if spilled] == [3, 11, 19, 27]


def test_beam_search_and_cropping_are_refused():
    layer = QuantizedKVLayer(KIVI)
    layer.update(*_kv(20, 2))
    layer.seal()
    with pytest.raises(NotImplementedError):
        layer.crop(5)


@pytest.fixture(scope="module")
def engine(models_root):
    return HFEngine(ModelConfig(device="cpu", dtype="float32"), PressConfig(), models_root,
                    QuantConfig(group_size=16, residual_length=32))


def _logits(engine, policy, budget):
    ctx, q = engine.encode(GenerationRequest(context=CONTEXT, question=QUESTION, max_tokens=1))
    state = engine.prefill(ctx, policy, budget)
    engine.extend(state, q)  # the question attends to the quantized context
    return state


def test_quantization_really_happens_inside_the_model(engine):
    full = _logits(engine, "full", 1.0).next_logits
    gaps = {p: float((_logits(engine, p, b).next_logits - full).norm() / full.norm())
            for p, b in (("int8", 0.5), ("int4", 0.25), ("int2", 0.125))}
    assert 0 < gaps["int8"] < gaps["int4"] < gaps["int2"]
    assert gaps["int8"] < 0.01


def test_generate_records_nominal_and_true_ratios(engine):
    r = engine.generate(GenerationRequest(context=CONTEXT, question=QUESTION, max_tokens=4,
                                          policy="int4", budget=0.5))
    layers, heads, head_dim = kv_shape(engine.model.config)
    n = r.notes["context_tokens"] + r.notes["question_tokens"]
    # per token and layer: 4-bit codes + one float16 (scale, zero) per 16 channels, K and V
    per_token = 2 * heads * (head_dim * 4 // 8 + 4)
    assert r.kv_bytes == layers * n * per_token
    assert r.notes["kv_budget_nominal"] == 0.25 and r.notes["fits_budget"] is True
    assert r.notes["kv_ratio_payload"] == pytest.approx(0.25)
    assert r.notes["kv_ratio_true"] == pytest.approx(r.kv_bytes / r.notes["kv_bytes_fp16_full"])
    assert r.notes["kv_ratio_true"] == pytest.approx(0.375)  # head_dim 16: groups of 16
    assert r.raw["applied"]["key_bits"] == 4 and r.raw["applied"]["bits_from"] == "name"


def test_eviction_then_quantization_multiplies_in_bytes(engine):
    ctx, q = engine.encode(GenerationRequest(context=CONTEXT, question=QUESTION, max_tokens=1))
    int4 = engine.prefill(ctx, "int4", 0.25)
    both = engine.prefill(ctx, "snapkv+int4", 0.125)
    assert both.applied["evict_keep"] == 0.5 and both.applied["compression_ratio"] == 0.5
    kept = both.cache.get_seq_length()
    assert kept == pytest.approx(ctx.shape[1] / 2, abs=1)
    # same bytes per kept token as int4 alone: the product of the two, measured
    assert both.kv_bytes * ctx.shape[1] == int4.kv_bytes * kept


def test_adaptive_stays_within_its_true_budget(engine):
    states = {b: _logits(engine, "adaptive", b) for b in (0.5, 0.75)}
    for budget, state in states.items():
        notes = engine.accounting_notes(state)
        assert notes["fits_budget"] and notes["kv_ratio_true"] <= budget + 1e-9
        for layer in state.cache.layers:  # the first tokens are protected at 8 bits
            assert layer.n_tokens == state.n_positions
            eight = layer.buckets[8].positions.tolist()
            assert set(range(4)) <= set(eight)
    mean_bits = {b: sum(k * n for k, n in s.cache.width_counts().items())
                 / sum(s.cache.width_counts().values()) for b, s in states.items()}
    assert mean_bits[0.5] < mean_bits[0.75]


def test_adaptive_below_its_floor_is_recorded_not_hidden(engine):
    # head_dim 16: even all-2-bit tokens cost more than a quarter of the 16-bit cache
    r = engine.generate(GenerationRequest(context=CONTEXT, question=QUESTION, max_tokens=2,
                                          policy="adaptive", budget=0.25))
    assert r.notes["fits_budget"] is False and r.notes["kv_ratio_true"] > 0.25
    assert set(r.notes["adaptive_widths"]) == {"2", "8"}
