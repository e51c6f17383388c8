"""Named architecture shapes for systems mode: random weights, real sizes.

Latency and memory depend on the shape, not on the weights, so a random-weight model of a
real architecture measures prefill, decode and KV bytes at scale without downloading anything.
Accuracy from such a model is meaningless, and the report hides it.
"""

from __future__ import annotations

from kv_transition.errors import BadInput
from kv_transition.model_shapes import SHAPES  # the shapes live below settings


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
