"""Named architecture shapes for systems mode: random weights, real sizes.

Latency and memory depend on the shape, not on the weights, so a random-weight model of a
real architecture measures prefill, decode and KV bytes at scale without downloading anything.
Accuracy from such a model is meaningless, and the report hides it.
"""

from __future__ import annotations

from typing import Any

from kv_transition.errors import BadInput

# Published config.json values of each architecture (the fields that set compute and memory).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072, tie_word_embeddings=False),
    "qwen2.5-7b": dict(arch="qwen2", hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       vocab_size=152064, rope_theta=1000000.0, max_position_embeddings=131072,
                       tie_word_embeddings=False),
    "mistral-7b": dict(arch="mistral", hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, vocab_size=32768, rope_theta=1000000.0,
                       max_position_embeddings=32768, tie_word_embeddings=False),
    # the bundled reference model's architecture (reference/model.py SIZES["reference"]), to
    # measure its speed before its weights exist
    "reference-4m": dict(arch="llama", hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                         vocab_size=1024, rope_theta=10000.0, max_position_embeddings=16384,
                         tie_word_embeddings=True),
    # small enough for a CPU test of the same code path
    "tiny-llama": dict(arch="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=2048,
                       max_position_embeddings=16384, tie_word_embeddings=True),
}


def shape_config(name: str):
    """A transformers config for a named shape."""
    if name not in SHAPES:
        raise BadInput(f"model.shape {name!r}: unknown; allowed: {', '.join(sorted(SHAPES))}")
    fields = dict(SHAPES[name])
    arch = fields.pop("arch")
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    return cls(**fields)


def build_random_model(name: str, dtype, device, attn: str, seed: int = 0):
    """Random weights built directly on the device in the target dtype (no float32 detour)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = shape_config(name)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
