"""The policy registry: a policy name and a budget become what the engine applies.

A budget is the fraction of the full KV cache a policy may keep (DESIGN.md, Budgets). For
kvpress eviction presses that is ``compression_ratio = 1 - budget``. Budget 1.0 is always the
uncompressed baseline, whatever the policy, so the grid runs it once as policy ``full``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BASELINE_POLICY = "full"


@dataclass(frozen=True)
class PolicySpec:
    name: str
    family: str  # "baseline" | "eviction"
    press: str | None  # kvpress class name
    needs_attention_weights: bool = False  # needs attn_implementation="eager"
    description: str = ""


POLICIES: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in (
        PolicySpec("full", "baseline", None, description="uncompressed cache"),
        PolicySpec("snapkv", "eviction", "SnapKVPress",
                   description="keep tokens the last window's queries attend to (SnapKV)"),
        PolicySpec("streamingllm", "eviction", "StreamingLLMPress",
                   description="keep sink tokens and the most recent window (StreamingLLM)"),
        PolicySpec("h2o", "eviction", "ObservedAttentionPress", needs_attention_weights=True,
                   description="keep heavy hitters by observed attention (H2O)"),
        PolicySpec("tova", "eviction", "TOVAPress",
                   description="keep tokens the last query attends to (TOVA)"),
        PolicySpec("knorm", "eviction", "KnormPress",
                   description="keep keys with the smallest L2 norm"),
        PolicySpec("expected_attention", "eviction", "ExpectedAttentionPress",
                   description="keep tokens by attention expected from future queries"),
        PolicySpec("pyramidkv", "eviction", "PyramidKVPress",
                   description="SnapKV scores with per-layer pyramid budgets (PyramidKV)"),
        PolicySpec("random", "eviction", "RandomPress",
                   description="keep a random subset (a control, not a method)"),
    )
}


def policy_spec(name: str) -> PolicySpec:
    try:
        return POLICIES[name]
    except KeyError:
        from kv_transition.errors import BadInput

        raise BadInput(
            f"unknown policy {name!r}; allowed: {', '.join(sorted(POLICIES))}") from None


def make_press(name: str, budget: float, n_context_tokens: int, options: dict[str, Any] | None = None):
    """Build the kvpress press for ``name`` at ``budget``; ``None`` means the full cache.

    Returns ``(press, applied)`` where ``applied`` records the parameters actually used, since
    a window clamped to a short context changes what the policy does.
    """
    spec = policy_spec(name)
    if spec.press is None or budget >= 1.0:
        return None, {"policy": BASELINE_POLICY, "compression_ratio": 0.0}
    import kvpress

    options = {k: v for k, v in (options or {}).items() if v is not None}
    kwargs: dict[str, Any] = {"compression_ratio": round(1.0 - budget, 6)}
    cls = getattr(kvpress, spec.press)
    fields = getattr(cls, "__dataclass_fields__", {})
    if "window_size" in fields:
        # SnapKV-style scoring needs more context tokens than its observation window.
        default = options.get("window_size", fields["window_size"].default)
        kwargs["window_size"] = max(1, min(default, n_context_tokens // 2))
    if "n_sink" in fields and "n_sink" in options:
        kwargs["n_sink"] = options["n_sink"]
    if "seed" in fields:
        kwargs["seed"] = 0
    return cls(**kwargs), {"policy": name, **kwargs}
