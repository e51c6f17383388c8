"""Bytes a quantized KV cache stores, and its ratios against a 16-bit cache of the same tokens.

Two ratios (issue 4), both against the float16/bfloat16 cache:
- *payload*: code bits / 16, what SmartKV reports (int4 = 0.25, KIVI K2V4 = 0.1875); a
  full-precision residual counts 16 bits per element, metadata nothing.
- *true*: every byte held: packed codes + float16 scale and zero-point per group + the
  full-precision residual, counted from the stored tensors (``cache_accounting``) or predicted
  by the same rules (``layer_bytes``), which the tests hold equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REFERENCE_BYTES = 2  # the 16-bit cache every ratio is taken against
META_BITS_PER_GROUP = 2 * 16  # one float16 scale and one float16 zero-point


@dataclass(frozen=True)
class TensorSpec:
    """How keys (or values) are quantized: width, grouping axis, group size actually used."""

    bits: int
    axis: str  # "token" | "channel"
    group: int


@dataclass(frozen=True)
class LayerSpec:
    key: TensorSpec
    value: TensorSpec
    residual: int  # most recent tokens kept in full precision (KIVI's R; 0 for uniform intN)


def token_group(head_dim: int, group: int) -> int | None:
    """The per-token group actually used: the largest multiple of 8 that divides head_dim and
    is at most ``group`` (a head of 16 channels cannot hold groups of 32). None if none exists."""
    for g in range(min(group, head_dim) // 8 * 8, 0, -8):
        if head_dim % g == 0:
            return g
    return None


def bits_per_element(spec: TensorSpec) -> float:
    """Stored bits per quantized element: the code plus its share of the group's metadata."""
    return spec.bits + META_BITS_PER_GROUP / spec.group


def quantized_tokens(n: int, spec: TensorSpec, residual: int) -> int:
    """Of ``n`` full-precision tokens, how many leave the residual: all beyond ``residual``,
    in whole groups of tokens for per-channel quantization."""
    excess = n - residual
    if excess <= 0:
        return 0
    return excess if spec.axis == "token" else excess // spec.group * spec.group


def tensor_bytes(n: int, head_dim: int, spec: TensorSpec, residual: int,
                 residual_bytes: int = REFERENCE_BYTES) -> int:
    """Bytes of one head's keys (or values) for ``n`` tokens."""
    q = quantized_tokens(n, spec, residual)
    codes = q * head_dim * spec.bits // 8
    meta = (q * head_dim // spec.group) * META_BITS_PER_GROUP // 8
    return codes + meta + (n - q) * head_dim * residual_bytes


def layer_bytes(n: int, head_dim: int, heads: int, spec: LayerSpec,
                residual_bytes: int = REFERENCE_BYTES) -> int:
    per_head = (tensor_bytes(n, head_dim, spec.key, spec.residual, residual_bytes)
                + tensor_bytes(n, head_dim, spec.value, spec.residual, residual_bytes))
    return heads * per_head


def reference_bytes(n: int, head_dim: int, heads: int, layers: int = 1) -> int:
    """The 16-bit full cache of ``n`` tokens: keys and values."""
    return 2 * layers * heads * head_dim * n * REFERENCE_BYTES


def true_ratio(n: int, head_dim: int, spec: LayerSpec) -> float:
    """True ratio at ``n`` tokens with a 16-bit residual (heads and layers cancel out)."""
    return layer_bytes(n, head_dim, 1, spec) / reference_bytes(n, head_dim, 1)


def steady_true_ratio(spec: LayerSpec) -> float:
    """True ratio once the residual is negligible (long contexts): codes + metadata."""
    return (bits_per_element(spec.key) + bits_per_element(spec.value)) / (2 * 16)


def payload_ratio(spec: LayerSpec) -> float:
    return (spec.key.bits + spec.value.bits) / (2 * 16)


# ---------------------------------------------------------------- a real cache

def kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head_dim) of a transformers config."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers, heads, head_dim


def _layer_counts(layer: Any) -> tuple[int, int]:
    """(stored bytes, payload bits) of one cache layer."""
    import torch

    if hasattr(layer, "stored_bytes"):
        return layer.stored_bytes(), layer.payload_bits()
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or keys.numel() == 0:
        return 0, 0
    return keys.nbytes + values.nbytes, 16 * (keys.numel() + values.numel())


def cache_accounting(cache: Any, n_positions: int, config: Any, dtype: Any) -> dict:
    """Measured bytes and both ratios of ``cache`` after ``n_positions`` prompt positions."""
    import torch

    from kv_transition.kv.bounded import bounded_share, full_layer_tokens  # imports torch

    stored, payload = 0, 0
    for layer in getattr(cache, "layers", []):
        b, p = _layer_counts(layer)
        stored, payload = stored + b, payload + p
    _, heads, head_dim = kv_shape(config)
    # layer by layer: a sliding-window layer's full cache is its window, not every position
    reference = reference_bytes(sum(full_layer_tokens(config, n_positions)), head_dim, heads)
    notes: dict[str, Any] = {
        "kv_bytes_fp16_full": reference,
        "kv_bounded_share": bounded_share(config, n_positions),
        "kv_ratio_true": stored / reference if reference else None,
        "kv_ratio_payload": payload / (8 * reference) if reference else None,
    }
    if torch.finfo(dtype).bits != 16:
        notes["kv_ratio_note"] = _dtype_note(str(dtype), torch.finfo(dtype).bits)
    return notes


def _dtype_note(dtype: str, bits: int) -> str:
    return (f"ratios are against a 16-bit cache; this model stores {dtype.split('.')[-1]}, so "
            f"its full cache has a true ratio of {bits / 16:g}")


_DTYPE_BITS = {"torch.float32": 32, "torch.float16": 16, "torch.bfloat16": 16,
               "torch.float64": 64}


def ratios_from_notes(notes: dict[str, Any]) -> dict[str, Any] | None:
    """Payload and true ratios from one request's telemetry notes. Requests recorded without
    them (an unquantized cache, e.g. through the shared prefill) are derived from ``kv_ratio``
    (bytes held / the full cache in the model's dtype) and the dtype: for a plain cache the
    payload ratio is the fraction of elements kept, the true one that times dtype bits / 16."""
    keys = ("kv_ratio_payload", "kv_ratio_true", "kv_budget_nominal", "kv_ratio_note")
    if notes.get("kv_ratio_true") is not None:
        return {k: notes.get(k) for k in keys}
    bits = _DTYPE_BITS.get(notes.get("dtype"))
    if notes.get("kv_ratio") is None or bits is None:
        return None
    return {"kv_ratio_payload": notes["kv_ratio"], "kv_ratio_true": notes["kv_ratio"] * bits / 16,
            "kv_budget_nominal": None,
            "kv_ratio_note": _dtype_note(notes["dtype"], bits) if bits != 16 else None}
