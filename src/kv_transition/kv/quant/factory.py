"""Build the quantized cache a policy names, for one model, at one budget."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kv_transition.kv.quant.accounting import kv_shape
from kv_transition.kv.quant.adaptive import AdaptiveKVCache
from kv_transition.kv.quant.cache import QuantizedKVCache
from kv_transition.policy.quant import ADAPTIVE_WIDTHS, eviction_keep, parse_quant, resolve_widths
from kv_transition.policy.widths import payload_ratio, steady_true_ratio, token_group

if TYPE_CHECKING:
    from kv_transition.settings import QuantConfig


def make_quant_cache(quant: str, budget: float, cfg: "QuantConfig", model_config: Any,
                     composed: bool = False) -> tuple[Any, dict[str, Any]]:
    """``(cache, applied)``: ``applied`` records the widths, axes and groups really used, the
    nominal budget they promise and whether their true ratio fits the budget."""
    policy = parse_quant(quant, cfg)
    layers, _, head_dim = kv_shape(model_config)
    if policy.kind == "adaptive":
        group = token_group(head_dim, cfg.group_size)
        if group is None:
            raise ValueError(f"head_dim {head_dim} cannot be grouped per token (no divisor that "
                             "is a multiple of 8)")
        cache = AdaptiveKVCache(layers, budget, group, cfg.sink_tokens, cfg.window)
        return cache, {"quant": quant, "quant_kind": "adaptive", "bits_from": "budget",
                       "widths": list(ADAPTIVE_WIDTHS), "group_size": group,
                       "sink_tokens": cfg.sink_tokens, "window": cfg.window,
                       "kv_budget_nominal": budget}
    keep = eviction_keep(quant, budget) if composed else 1.0
    # in EVICTION+QUANT the widths only have to fit what the press left of the budget
    spec, fits = resolve_widths(policy, budget / keep, cfg, head_dim)
    return QuantizedKVCache(layers, spec), {
        "quant": quant, "quant_kind": policy.kind, "bits_from": policy.bits_from,
        "key_bits": spec.key.bits, "value_bits": spec.value.bits,
        "key_axis": spec.key.axis, "value_axis": spec.value.axis,
        "key_group": spec.key.group, "value_group": spec.value.group,
        "residual_length": spec.residual,
        "kv_budget_nominal": round(keep * payload_ratio(spec), 6),
        "steady_true_ratio": round(keep * steady_true_ratio(spec), 6),
        "fits_budget": fits}
