"""What the engine applies for a policy at a budget: the kvpress press and the cache it fills.

The policy was parsed at config load (``policy/spec.py``: ``PolicySpec``); here it meets a
context and a model. For kvpress eviction presses a budget (the fraction of the full KV cache
kept) is ``compression_ratio = 1 - budget``; budget 1.0 is the uncompressed cache.
"""

from __future__ import annotations

from typing import Any

from kv_transition.kv.custom import build_press
from kv_transition.policy.quant import eviction_keep
from kv_transition.policy.spec import BASELINE_POLICY, PolicySpec, policy_spec
from kv_transition.press_catalog import observation_window


def is_token_budget(budget: float) -> bool:
    """Budgets above 1 count tokens kept (kv.budget_tokens); at most 1, a fraction."""
    return budget > 1.0


def budget_label(budget: float) -> str:
    return f"{int(budget)} tok" if is_token_budget(budget) else f"{budget:g}"


def make_press(name: str, budget: float, n_context_tokens: int, options: dict[str, Any] | None = None):
    """Build the kvpress press for ``name`` at ``budget``; ``None`` means the full cache.

    Returns ``(press, applied)`` where ``applied`` records the parameters actually used, since
    a window clamped to a short context changes what the policy does.
    """
    if is_token_budget(budget):  # kv.budget_tokens: this context's fraction
        # kvpress keeps int(n * (1 - ratio)) tokens: half a token of slack makes it exactly N
        fraction = min(1.0, (budget + 0.5) / max(1, n_context_tokens))
        if fraction >= 1.0:
            return None, {"policy": name, "budget_tokens": int(budget), "compression_ratio": 0.0}
        press, applied = make_press(name, fraction, n_context_tokens, options)
        return press, {**applied, "budget_tokens": int(budget)}
    spec = policy_spec(name)
    if spec.quant is not None and budget < 1.0:
        return _quant_press(spec, budget, n_context_tokens, options)
    if spec.press is None or budget >= 1.0:
        return None, {"policy": BASELINE_POLICY, "compression_ratio": 0.0}
    if spec.definition is not None:
        return build_press(spec.name, spec.definition, budget, n_context_tokens)
    import kvpress  # lazy: kvpress imports torch and transformers

    options = {k: v for k, v in (options or {}).items() if v is not None}
    kwargs: dict[str, Any] = {"compression_ratio": round(1.0 - budget, 6)}
    cls = getattr(kvpress, spec.press)
    fields = getattr(cls, "__dataclass_fields__", {})
    if "window_size" in fields:
        default = options.get("window_size", fields["window_size"].default)
        kwargs["window_size"] = observation_window(default, n_context_tokens)
    if "n_sink" in fields and "n_sink" in options:
        kwargs["n_sink"] = options["n_sink"]
    if "seed" in fields:
        kwargs["seed"] = 0
    return cls(**kwargs), {"policy": name, **kwargs}


def _quant_press(spec: PolicySpec, budget: float, n_context_tokens: int, options):
    """A quantized policy's press: none, or for EVICTION+QUANT the eviction press keeping
    min(1, budget / nominal) of the tokens, so the two multiply to the budget."""
    if spec.press is None:
        return None, {"policy": spec.name, "compression_ratio": 0.0}
    keep = eviction_keep(spec.quant, budget)
    press, applied = (None, {"compression_ratio": 0.0}) if keep >= 1.0 else \
        make_press(spec.name.split("+")[0], keep, n_context_tokens, options)
    return press, {**applied, "policy": spec.name, "evict_keep": keep}


def make_cache(name: str, budget: float, quant_cfg, model_config):
    """The cache the prefill fills: a quantized cache for quantization policies, otherwise a
    ``DynamicCache``. Returns ``(cache, applied)``, ``applied`` the widths actually used."""
    spec = policy_spec(name)
    if spec.quant is None or budget >= 1.0:
        from kv_transition.kv.bounded import new_cache  # lazy: torch stays off the report's path

        return new_cache(model_config), {}
    from kv_transition.kv.quant.factory import make_quant_cache  # lazy: as new_cache

    return make_quant_cache(spec.quant, budget, quant_cfg, model_config,
                            composed=spec.press is not None)
