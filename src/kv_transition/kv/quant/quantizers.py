"""Grouped asymmetric uniform quantization with packed codes, in plain torch (CPU or GPU).

A group of values x is stored as codes c = round((x - zero) / scale) in [0, 2^bits - 1] with
one (scale, zero-point) pair per group in float16, as KIVI and SmartKV store them. The pair is
rounded *outward* to float16 (zero down, scale up), so every value of the group still maps into
the code range and reconstruction zero + c * scale is off by at most scale / 2.

Two grouping axes, as in KIVI:
- ``"token"``: each token's head_dim vector is cut into groups of g channels (per-token);
- ``"channel"``: each channel is grouped over g consecutive tokens (per-channel); the input
  must hold a whole number of token groups.

Codes are packed 8 at a time into ``bits`` bytes (every width from 1 to 8 packs exactly) along
the last axis of the stored tensor, whose leading axes keep the token order, so chunks append
along the token axis without repacking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

META_DTYPE = torch.float16
AXES = ("token", "channel")
_TINY_SCALE = float(torch.finfo(META_DTYPE).tiny)  # a constant group still gets a valid scale


def _bit_shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(8, device=device, dtype=torch.int64) * bits


def _byte_shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(bits, device=device, dtype=torch.int64) * 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes ``[..., m]`` (m a multiple of 8) -> uint8 ``[..., m * bits / 8]``."""
    if bits == 8:
        return codes.contiguous()
    *lead, m = codes.shape
    if 8 % bits == 0:  # whole codes per byte: stay in uint8, same layout as the general case
        per = 8 // bits
        grouped = codes.reshape(*lead, m // per, per)
        out = grouped[..., 0].clone()
        for j in range(1, per):
            out |= grouped[..., j] << (j * bits)
        return out
    grouped = codes.reshape(*lead, m // 8, 8).to(torch.int64)
    # the 8 codes occupy disjoint bit fields, so their sum is their bitwise OR
    word = (grouped << _bit_shifts(bits, codes.device)).sum(-1)
    out = (word.unsqueeze(-1) >> _byte_shifts(bits, codes.device)) & 0xFF
    return out.to(torch.uint8).reshape(*lead, m // 8 * bits)


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`."""
    if bits == 8:
        return packed
    *lead, n = packed.shape
    if 8 % bits == 0:
        mask = (1 << bits) - 1
        parts = [(packed >> (j * bits)) & mask for j in range(8 // bits)]
        return torch.stack(parts, dim=-1).reshape(*lead, n * 8 // bits)
    grouped = packed.reshape(*lead, n // bits, bits).to(torch.int64)
    word = (grouped << _byte_shifts(bits, packed.device)).sum(-1)
    codes = (word.unsqueeze(-1) >> _bit_shifts(bits, packed.device)) & ((1 << bits) - 1)
    return codes.to(torch.uint8).reshape(*lead, n // bits * 8)


@dataclass
class QuantTensor:
    """Quantized ``(batch, heads, tokens, head_dim)`` keys or values.

    token axis:   packed ``(B, H, T, D*bits/8)``,   scale/zero ``(B, H, T, D/g)``
    channel axis: packed ``(B, H, T/g, D, g*bits/8)``, scale/zero ``(B, H, T/g, D)``
    """

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    axis: str
    group: int
    head_dim: int

    @property
    def n_tokens(self) -> int:
        rows = self.packed.shape[2]
        return rows * self.group if self.axis == "channel" else rows

    @property
    def nbytes(self) -> int:
        """What is actually stored: packed codes, scales and zero-points."""
        return self.packed.nbytes + self.scale.nbytes + self.zero.nbytes

    @property
    def payload_bits(self) -> int:
        """Code bits only, without metadata: what a 'bits/16' figure counts."""
        batch, heads = self.packed.shape[:2]
        return batch * heads * self.n_tokens * self.head_dim * self.bits

    def cat(self, other: "QuantTensor") -> "QuantTensor":
        """Append ``other`` (later tokens, same layout) along the token axis."""
        join = lambda a, b: torch.cat([a, b], dim=2)  # noqa: E731
        return QuantTensor(join(self.packed, other.packed), join(self.scale, other.scale),
                           join(self.zero, other.zero), self.bits, self.axis, self.group,
                           self.head_dim)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        codes = unpack_codes(self.packed, self.bits).to(torch.float32)
        batch, heads = codes.shape[:2]
        if self.axis == "token":
            codes = codes.reshape(batch, heads, -1, self.head_dim // self.group, self.group)
        x = codes * self.scale.float().unsqueeze(-1) + self.zero.float().unsqueeze(-1)
        if self.axis == "channel":  # (B, H, T/g, D, g) -> (B, H, T, D)
            x = x.transpose(-1, -2)
        return x.reshape(batch, heads, -1, self.head_dim).to(dtype)


def _round_meta(low: torch.Tensor, high: torch.Tensor, qmax: int):
    """float16 (scale, zero) rounded outward so [low, high] stays inside the code range."""
    zero = low.to(META_DTYPE)
    zero = torch.where(zero.float() > low, torch.nextafter(zero, torch.full_like(zero, -torch.inf)),
                       zero)
    wanted = ((high - zero.float()) / qmax).clamp_min(_TINY_SCALE)
    scale = wanted.to(META_DTYPE)
    scale = torch.where(scale.float() < wanted,
                        torch.nextafter(scale, torch.full_like(scale, torch.inf)), scale)
    return scale, zero


def _groups(x: torch.Tensor, axis: str, group: int) -> torch.Tensor:
    """View ``(B, H, T, D)`` with the quantization group as the last axis."""
    batch, heads, tokens, dim = x.shape
    if axis == "token":
        if dim % group:
            raise ValueError(f"head_dim {dim} is not a multiple of the group size {group}")
        return x.reshape(batch, heads, tokens, dim // group, group)
    if tokens % group:
        raise ValueError(f"per-channel groups need a multiple of {group} tokens, got {tokens}")
    return x.reshape(batch, heads, tokens // group, group, dim).transpose(-1, -2)


def quantize(x: torch.Tensor, bits: int, axis: str, group: int) -> QuantTensor:
    """Quantize ``(B, H, T, D)`` to ``bits`` with groups of ``group`` along ``axis``."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    if not 1 <= bits <= 8 or group % 8:
        raise ValueError(f"bits must be in 1..8 and the group a multiple of 8 (got {bits}, {group})")
    qmax = (1 << bits) - 1
    g = _groups(x.float(), axis, group)
    scale, zero = _round_meta(g.amin(-1), g.amax(-1), qmax)
    codes = torch.round((g - zero.float().unsqueeze(-1)) / scale.float().unsqueeze(-1))
    codes = codes.clamp_(0, qmax).to(torch.uint8)
    if axis == "token":
        codes = codes.reshape(*x.shape)  # back to (B, H, T, D): pack along head_dim
    return QuantTensor(pack_codes(codes, bits), scale, zero, bits, axis, group, x.shape[-1])

