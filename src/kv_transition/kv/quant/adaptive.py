"""SmartKV-style adaptive precision: per-token widths in {2, 3, 4, 8} under a byte budget.

When a layer's prefill ends, every prompt token is scored by the attention the last ``window``
prompt queries pay it (SnapKV's observation window, averaged over heads and queries; the window
itself gets the top score), weighted up for recency (the newest token counts twice the oldest),
and the first ``sink_tokens`` are kept at 8 bits. A greedy solver then buys precision: every
token starts at 2 bits and upgrades (2->3, 3->4, 4->8) are bought in order of
importance x error reduction per byte until the budget is spent. The budget is the *true* ratio
against the 16-bit cache: packed codes, float16 scale and zero-point per group and a 4-byte
position per token all count.

Tokens added later (the question, generated tokens) get the widest width that keeps the layer
within budget. Each width's tokens live in their own bucket with their positions, and attention
reads them scattered back into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from kv_transition.kv.quant.cache import resident, Unsupported
from kv_transition.kv.quant.quantizers import QuantTensor, quantize
from kv_transition.policy.quant import ADAPTIVE_WIDTHS
from kv_transition.policy.widths import reference_bytes

POSITION_BYTES = 4  # int32 position of each stored token
PROTECTED_BITS = max(ADAPTIVE_WIDTHS)


def token_cost(bits: int, batch: int, heads: int, head_dim: int, group: int) -> int:
    """Bytes one token costs in one layer at ``bits``: keys and values, every head."""
    per_tensor = head_dim * bits // 8 + (head_dim // group) * 4  # codes + float16 scale, zero
    return 2 * batch * heads * per_tensor + POSITION_BYTES


def error_weight(bits: int) -> float:
    """Relative quantization MSE at ``bits``: it scales with the squared step."""
    return float((2 ** bits - 1) ** -2)


def solve_widths(importance: torch.Tensor, allowed: float, costs: dict[int, int],
                 protected: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Greedy widths per token; returns (bits, fits). Upgrades are bought by
    importance x error drop per byte; that ratio falls from 2->3 to 3->4 to 4->8 for every token,
    so a prefix of the sorted upgrades never skips a step of any token."""
    lo, hi = min(ADAPTIVE_WIDTHS), PROTECTED_BITS
    bits = torch.where(protected, hi, lo).to(torch.long)
    used = sum(costs[int(b)] * int((bits == b).sum()) for b in (lo, hi))
    if used > allowed:
        return bits, False
    free = (~protected).nonzero().squeeze(1)
    imp = importance.float().cpu()[free.cpu()].clamp_min(0)
    gains, prices, targets, tokens, steps = [], [], [], [], []
    for step, (a, b) in enumerate(zip(ADAPTIVE_WIDTHS, ADAPTIVE_WIDTHS[1:])):
        price = costs[b] - costs[a]
        gains.append(imp * (error_weight(a) - error_weight(b)) / price)
        prices.append(torch.full_like(imp, price))
        targets.append(torch.full_like(imp, b))
        tokens.append(free.cpu())
        steps.append(torch.full_like(imp, step))
    gain, price, target = torch.cat(gains), torch.cat(prices), torch.cat(targets)
    token, step = torch.cat(tokens), torch.cat(steps)
    # best ratio first; among equal ratios, the earlier step of a token first
    order = torch.argsort(step, stable=True)
    order = order[torch.argsort(-gain[order], stable=True)]
    bought = torch.cumsum(price[order], 0) <= allowed - used
    chosen = order[bought]
    out = bits.cpu().clone()
    out.scatter_reduce_(0, token[chosen], target[chosen].long(), reduce="amax")
    return out.to(importance.device), True


def token_importance(module: Any, kwargs: dict[str, Any], keys: torch.Tensor,
                     window: int) -> torch.Tensor:
    """Attention-based importance of every prompt token, recency-weighted."""
    from kvpress.presses.snapkv_press import SnapKVPress

    n = keys.shape[-2]
    if n < 2:
        return torch.ones(n, device=keys.device)
    w = max(1, min(window, n // 2))
    attn = SnapKVPress.compute_window_attention(module, kwargs["hidden_states"], keys, w,
                                                kwargs["position_embeddings"])
    scores = attn.float().mean(dim=(0, 1, 2))  # (n - w,)
    top = scores.max() if scores.numel() else torch.tensor(1.0, device=keys.device)
    scores = torch.cat([scores, top.expand(w)])  # the observation window itself is kept high
    recency = 1.0 + torch.arange(n, device=keys.device, dtype=torch.float32) / (n - 1)
    return scores * recency


@dataclass
class _Bucket:
    positions: torch.Tensor  # int32 token positions
    keys: QuantTensor
    values: QuantTensor

    @property
    def nbytes(self) -> int:
        return self.positions.nbytes + self.keys.nbytes + self.values.nbytes


class AdaptiveKVLayer(Unsupported, DynamicLayer):
    def __init__(self, budget: float, group: int, sink_tokens: int, window: int):
        super().__init__()
        self.budget, self.group, self.sink_tokens, self.window = budget, group, sink_tokens, window
        self.buckets: dict[int, _Bucket] = {}
        self.n_tokens = 0
        self.fits = True
        self.sealed = False

    # -- sizes ------------------------------------------------------------------------------
    def _costs(self) -> dict[int, int]:
        batch, heads, _, head_dim = self.keys.shape
        return {b: token_cost(b, batch, heads, head_dim, self.group) for b in ADAPTIVE_WIDTHS}

    def _allowed(self, n: int) -> float:
        batch, heads, _, head_dim = self.keys.shape
        return self.budget * batch * reference_bytes(n, head_dim, heads)

    # -- phases -------------------------------------------------------------------------------
    def seal(self, importance: torch.Tensor) -> None:
        if not self.is_initialized or self.keys.dim() != 4:
            return
        n = self.keys.shape[-2]
        protected = torch.arange(n, device=importance.device) < self.sink_tokens
        bits, self.fits = solve_widths(importance, self._allowed(n), self._costs(), protected)
        for b in ADAPTIVE_WIDTHS:
            idx = (bits == b).nonzero().squeeze(1).to(self.keys.device)
            if idx.numel():
                self._store(b, idx, self.keys[:, :, idx], self.values[:, :, idx])
        self.n_tokens = n
        self.keys, self.values = self.keys[..., :0, :].clone(), self.values[..., :0, :].clone()
        self.sealed = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.sealed:
            return super().update(key_states, value_states, cache_kwargs)
        history_k, history_v = self.materialize()
        keys = torch.cat([history_k, key_states], dim=-2)
        values = torch.cat([history_v, value_states], dim=-2)
        for t in range(key_states.shape[-2]):
            pos = torch.tensor([self.n_tokens], device=key_states.device)
            self._store(self._online_width(), pos, key_states[:, :, t:t + 1],
                        value_states[:, :, t:t + 1])
            self.n_tokens += 1
        return keys, values

    def _online_width(self) -> int:
        costs, allowed, used = self._costs(), self._allowed(self.n_tokens + 1), self.stored_bytes()
        for b in sorted(ADAPTIVE_WIDTHS, reverse=True):
            if used + costs[b] <= allowed:
                return b
        self.fits = False
        return min(ADAPTIVE_WIDTHS)

    def _store(self, bits: int, positions: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor) -> None:
        group = self.group
        new = _Bucket(positions.to(torch.int32), quantize(keys, bits, "token", group),
                      quantize(values, bits, "token", group))
        old = self.buckets.get(bits)
        if old is not None:
            new = _Bucket(torch.cat([old.positions, new.positions]), old.keys.cat(new.keys),
                          old.values.cat(new.values))
        self.buckets[bits] = new

    # -- reading --------------------------------------------------------------------------------
    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.sealed:
            return self.keys, self.values
        batch, heads, _, head_dim = self.keys.shape
        shape = (batch, heads, self.n_tokens, head_dim)
        keys = torch.empty(shape, dtype=self.dtype, device=self.device)
        values = torch.empty(shape, dtype=self.dtype, device=self.device)
        for bucket in self.buckets.values():
            where = bucket.positions.long()
            keys[:, :, where] = bucket.keys.dequantize(self.dtype)
            values[:, :, where] = bucket.values.dequantize(self.dtype)
        return keys, values

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.n_tokens if self.sealed else resident(self.keys)

    def stored_bytes(self) -> int:
        resid = sum(t.nbytes for t in (self.keys, self.values) if resident(t))
        return sum(b.nbytes for b in self.buckets.values()) + resid

    def payload_bits(self) -> int:
        quant = sum(b.keys.payload_bits + b.values.payload_bits for b in self.buckets.values())
        return quant + 16 * sum(t.numel() for t in (self.keys, self.values) if resident(t))

    def width_counts(self) -> dict[int, int]:
        return {b: int(bucket.positions.numel()) for b, bucket in sorted(self.buckets.items())}


class AdaptiveKVCache(Cache):
    def __init__(self, num_layers: int, budget: float, group: int, sink_tokens: int, window: int):
        super().__init__(layers=[AdaptiveKVLayer(budget, group, sink_tokens, window)
                                 for _ in range(num_layers)])

    def seal_layer(self, module: torch.nn.Module, kwargs: dict[str, Any]) -> None:
        layer = self.layers[module.layer_idx]
        if layer.is_initialized and not layer.sealed:
            layer.seal(token_importance(module, kwargs, layer.keys, layer.window))

    def width_counts(self) -> dict[int, int]:
        total: dict[int, int] = {}
        for layer in self.layers:
            for b, n in layer.width_counts().items():
                total[b] = total.get(b, 0) + n
        return total

    def fits_budget(self) -> bool:
        return all(layer.fits for layer in self.layers)
