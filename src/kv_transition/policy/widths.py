"""What a quantized width costs: bytes of codes and metadata, and ratios against 16 bits.

Two ratios (issue 4), both against the float16/bfloat16 cache:
- *payload*: code bits / 16, what SmartKV reports (int4 = 0.25, KIVI K2V4 = 0.1875); a
  full-precision residual counts 16 bits per element, metadata nothing.
- *true*: every byte held: packed codes + float16 scale and zero-point per group + the
  full-precision residual, predicted here (``layer_bytes``) by the same rules that
  ``kv/quant/accounting.py`` counts from the stored tensors (``cache_accounting``); the tests
  hold the two equal.

Pure arithmetic, no torch: config validation (``policy/quant.py``) picks widths with it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
