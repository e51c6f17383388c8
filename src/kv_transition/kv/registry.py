"""The policy registry: a policy name and a budget become what the engine applies.

A budget is the fraction of the full KV cache a policy may keep (DESIGN.md, Budgets). For
kvpress eviction presses that is ``compression_ratio = 1 - budget``. Budget 1.0 is always the
uncompressed baseline, whatever the policy, so the grid runs it once as policy ``full``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kv_transition.press_catalog import observation_window

BASELINE_POLICY = "full"


@dataclass(frozen=True)
class PolicySpec:
    name: str
    family: str  # "baseline" | "eviction" | "quant" | "eviction+quant"
    press: str | None  # kvpress class name
    needs_attention_weights: bool = False  # needs attn_implementation="eager"
    # compression is a pure function of one layer's prefill inputs, so one prefill can serve
    # every budget (engines/shared_prefill.py); false for masking or multi-pass presses
    shared_prefill: bool = True
    description: str = ""
    quant: str | None = None  # a kv/quant policy, applied to what the press (if any) kept
    definition: Any = None  # a press_catalog.PressDef for a policy defined in the config


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


# Quantization (kv/quant/policies.py): fixed names here; "kivi-kXvY" and "EVICTION+QUANT"
# (an eviction press, then quantization of what it kept) are parsed by policy_spec.
def _quant_specs() -> dict[str, PolicySpec]:
    from kv_transition.kv.quant.policies import DESCRIPTIONS

    return {name: PolicySpec(name, "quant", None, shared_prefill=False, quant=name,
                             description=text) for name, text in DESCRIPTIONS.items()}


POLICIES.update(_quant_specs())
EVICTION_POLICIES = tuple(n for n, s in POLICIES.items() if s.family == "eviction")


def _parsed_spec(name: str) -> PolicySpec:
    """A composed or parameterised name; ValueError says what is wrong with it."""
    from kv_transition.kv.quant.policies import is_quant_name, parse_quant, split_policy
    from kv_transition.settings import QuantConfig

    evict, quant = split_policy(name, EVICTION_POLICIES)
    if evict is None and quant is not None:
        parse_quant(quant, QuantConfig())
        return PolicySpec(name, "quant", None, shared_prefill=False, quant=quant)
    if evict is not None and quant is not None and is_quant_name(quant):
        base = POLICIES[evict]
        return PolicySpec(name, "eviction+quant", base.press, base.needs_attention_weights,
                          shared_prefill=False, quant=quant,
                          description=f"{base.description}, then {quant} quantization")
    raise ValueError(f"unknown policy {name!r}; allowed: {', '.join(sorted({*POLICIES, *CUSTOM}))}, "
                     "kivi-kXvY, EVICTION+QUANT such as snapkv+int4, or a mapping "
                     "{name, press, params, inner} built from any kvpress press")


# Policies the loaded config defines from any kvpress press (kv.press.custom), by name. Filled
# when the config is validated, so every process that loads the config (Ray workers, serve)
# knows them; a later config that defines the same name replaces the definition.
CUSTOM: dict[str, PolicySpec] = {}


def register_custom(name: str, definition) -> PolicySpec:
    """Make ``name`` a policy built from ``definition``; ValueError if it shadows a built-in."""
    from kv_transition.kv.custom import spec_fields

    if name in POLICIES or "+" in name:
        raise ValueError(f"policy {name!r}: the name is taken by a built-in policy; choose "
                         "another")
    CUSTOM[name] = spec = PolicySpec(**spec_fields(name, definition))
    return spec


def policy_spec(name: str) -> PolicySpec:
    try:
        return POLICIES.get(name) or CUSTOM[name]
    except KeyError:
        from kv_transition.errors import BadInput

        try:
            return _parsed_spec(name)
        except ValueError as exc:
            raise BadInput(str(exc)) from None


def check_policies(names: list[str], budgets: list[float], quant_cfg,
                   budget_tokens: list[int] = ()) -> None:
    """Config-time check of every policy x budget cell; ValueError names what cannot run."""
    from kv_transition.errors import BadInput
    from kv_transition.kv.quant.policies import check_setting

    for name in names:
        try:
            policy_spec(name)
        except BadInput as exc:
            raise ValueError(str(exc)) from None
        if budget_tokens and policy_spec(name).quant is not None:
            raise ValueError(f"policy {name!r}: kv.budget_tokens applies to eviction policies; "
                             "a quantized cache's widths are chosen from a fraction (kv.budgets)")
        if name in CUSTOM:  # a press definition: checked when it was registered
            continue
        for budget in budgets:
            if budget < 1.0:
                check_setting(name, budget, quant_cfg, EVICTION_POLICIES)


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
        from kv_transition.kv.custom import build_press

        return build_press(spec.name, spec.definition, budget, n_context_tokens)
    import kvpress

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
    from kv_transition.kv.quant.policies import eviction_keep

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
        from kv_transition.kv.bounded import new_cache

        return new_cache(model_config), {}
    from kv_transition.kv.quant.factory import make_quant_cache

    return make_quant_cache(spec.quant, budget, quant_cfg, model_config,
                            composed=spec.press is not None)
