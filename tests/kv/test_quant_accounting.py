"""Byte accounting: hand-computed figures, and the formulas equal to what the caches store."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from kv_transition.kv.quant.accounting import cache_accounting
from kv_transition.kv.quant.adaptive import AdaptiveKVLayer, token_cost
from kv_transition.kv.quant.cache import QuantizedKVLayer
from kv_transition.policy.widths import (LayerSpec, TensorSpec, layer_bytes, payload_ratio,
                                         steady_true_ratio, true_ratio)

INT4 = LayerSpec(TensorSpec(4, "token", 32), TensorSpec(4, "token", 32), 0)
K2V4 = LayerSpec(TensorSpec(2, "channel", 32), TensorSpec(4, "token", 32), 128)


def test_int4_by_hand():
    # one head, 4096 tokens, head_dim 128: codes 4096*128/2 = 262144 bytes, and 4 groups per
    # token of (scale, zero) in float16 = 4096*4*4 = 65536 bytes; keys and values alike
    assert layer_bytes(4096, 128, 1, INT4) == 2 * (262144 + 65536)
    assert true_ratio(4096, 128, INT4) == 0.3125  # over 2*4096*128*2 = 2097152 bytes
    assert payload_ratio(INT4) == 0.25 and steady_true_ratio(INT4) == 0.3125


def test_kivi_k2v4_by_hand():
    assert payload_ratio(K2V4) == 0.1875  # what SmartKV reports for KIVI K2V4
    # 512 tokens: keys quantize 384 (whole groups of 32 beyond the 128-token residual):
    # 384*128*2/8 + 384*128/32*4 + 128*128*2 = 12288 + 6144 + 32768 = 51200 bytes;
    # values the same 384 per token: 384*128*4/8 + 384*4*4 + 32768 = 63488 bytes
    assert layer_bytes(512, 128, 1, K2V4) == 51200 + 63488
    assert true_ratio(512, 128, K2V4) == pytest.approx(114688 / 262144)  # 0.4375
    # 4096 tokens: keys 3968 quantized -> 126976 + 63488 + 32768; values 253952 + 63488 + 32768
    assert layer_bytes(4096, 128, 1, K2V4) == 223232 + 350208
    assert true_ratio(4096, 128, K2V4) == pytest.approx(0.2734375)
    assert steady_true_ratio(K2V4) == 0.25  # (2+1 + 4+1) bits / 32


def _filled(layer, n, heads=2, head_dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    k, v = (torch.randn(1, heads, n, head_dim, generator=g) for _ in range(2))
    layer.update(k, v)
    return layer


def _stored_tensors(layer):
    for q in (layer.qkeys, layer.qvalues):
        if q is not None:
            yield from (q.packed, q.scale, q.zero)
    yield from (layer.keys, layer.values)


@pytest.mark.parametrize("spec", [
    LayerSpec(TensorSpec(4, "token", 16), TensorSpec(4, "token", 16), 0),
    LayerSpec(TensorSpec(3, "channel", 8), TensorSpec(3, "channel", 8), 0),
    LayerSpec(TensorSpec(2, "channel", 8), TensorSpec(4, "token", 8), 16),
])
@pytest.mark.parametrize("n", [5, 16, 37, 100])
def test_measured_bytes_equal_the_formula(spec, n):
    layer = _filled(QuantizedKVLayer(spec), n)
    layer.seal()
    # float32 inputs: the residual costs 4 bytes per element
    assert layer.stored_bytes() == layer_bytes(n, 16, 2, spec, residual_bytes=4)
    for step in range(1, 12):  # decoding keeps the two in step
        layer.update(torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16))
        assert layer.stored_bytes() == layer_bytes(n + step, 16, 2, spec, residual_bytes=4)
    # nothing is hidden behind a view: each tensor's storage is exactly its own bytes
    for t in _stored_tensors(layer):
        assert t.untyped_storage().nbytes() == t.nbytes


def test_adaptive_bytes_are_the_cost_of_each_token():
    layer = _filled(AdaptiveKVLayer(budget=0.5, group=8, sink_tokens=2, window=4), 40)
    importance = torch.linspace(0, 1, 40)
    layer.seal(importance)
    counts = layer.width_counts()
    assert sum(counts.values()) == 40 and counts.get(8, 0) >= 2
    expected = sum(n * token_cost(b, 1, 2, 16, 8) for b, n in counts.items())
    assert layer.stored_bytes() == expected
    reference = 2 * 2 * 40 * 16 * 2
    assert layer.stored_bytes() <= 0.5 * reference


def test_cache_accounting_of_a_float32_dynamic_cache():
    config = LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                         num_hidden_layers=2, intermediate_size=64, vocab_size=10)
    cache = DynamicCache()
    for i in range(2):
        cache.update(torch.randn(1, 1, 10, 16), torch.randn(1, 1, 10, 16), i)
    notes = cache_accounting(cache, 20, config, torch.float32)
    # 10 of 20 positions kept, stored in float32: payload 0.5, true 1.0 of the 16-bit cache
    assert notes["kv_bytes_fp16_full"] == 2 * 2 * 1 * 16 * 20 * 2
    assert notes["kv_ratio_payload"] == 0.5 and notes["kv_ratio_true"] == 1.0
    assert "float32" in notes["kv_ratio_note"]
    assert "kv_ratio_note" not in cache_accounting(cache, 20, config, torch.bfloat16)
