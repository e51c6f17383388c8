"""Decoding presses compress the cache while the answer is written, inside the real model."""

from pathlib import Path

import pytest

from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.settings import KVConfig, ModelConfig

CONTEXT = " ".join(["the old river ran past the quiet town ."] * 30)
EVERY = {"compression_interval": 4, "hidden_states_buffer_size": 4}
DEFINITIONS = [
    {"name": "decoding_knorm", "press": "DecodingPress", "params": EVERY,
     "inner": {"press": "KnormPress"}},
    {"name": "decoding_ratio", "press": "CompressionRatioDecodingPress", "params": EVERY,
     "inner": {"press": "KnormPress"}},
    {"name": "decoding_merge", "press": "CAMPress", "params": EVERY,
     "inner": {"press": "KnormPress"}},
    # SnapKV halves the context at prefill; the decoding press keeps 64 tokens while decoding
    {"name": "prefill_then_decoding", "press": "PrefillDecodingPress",
     "inner": [{"press": "SnapKVPress"},
               {"press": "DecodingPress", "params": {**EVERY, "target_size": 64},
                "inner": {"press": "KnormPress"}}]},
]


@pytest.fixture(scope="module")
def engine(models_root: Path):
    kv = KVConfig(policies=DEFINITIONS)
    return HFEngine(ModelConfig(device="cpu", dtype="float32"), kv.press, models_root)


def _req(**kw):
    return GenerationRequest(**{"context": CONTEXT, "question": "what ran past the town ?",
                                "max_tokens": 12, **kw})


@pytest.mark.parametrize("policy", [d["name"] for d in DEFINITIONS])
def test_the_cache_shrinks_while_decoding(engine, policy):
    full = engine.generate(_req())
    out = engine.generate(_req(policy=policy, budget=0.5))
    assert out.completion_tokens == full.completion_tokens == 12  # random weights: no EOS
    fed = full.prompt_tokens + 11  # every generated token but the last is fed back
    assert full.notes["kv_tokens_end"] == fed  # the full cache only grows
    if policy == "prefill_then_decoding":
        assert out.kv_bytes < 0.6 * full.kv_bytes  # compressed at prefill too
        assert out.notes["kv_tokens_end"] <= 64 + 4
    else:
        assert out.kv_bytes == full.kv_bytes  # the prefill is left whole
        assert out.notes["kv_tokens_end"] < 0.6 * fed
    assert out.notes["kv_bytes_end"] < 0.6 * full.notes["kv_bytes_end"]

