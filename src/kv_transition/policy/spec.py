"""Every policy name the config can give, parsed into a ``PolicySpec``; checked at config load.

A budget is the fraction of the full KV cache a policy may keep (DESIGN.md, Budgets). For
kvpress eviction presses that is ``compression_ratio = 1 - budget``. Budget 1.0 is always the
uncompressed baseline, whatever the policy, so the grid runs it once as policy ``full``.
``kv/registry.py`` turns a spec and a budget into what the engine applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from kv_transition.errors import BadInput
from kv_transition.policy.quant import (DESCRIPTIONS, QuantOptions, check_setting, is_quant_name,
                                        parse_quant, split_policy)
from kv_transition.press_catalog import DECODING, PRESSES, SCORER, PressDef

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
    quant: str | None = None  # a policy/quant.py policy, applied to what the press (if any) kept
    definition: Any = None  # a press_catalog.PressDef for a policy defined in the config
    decoding: bool = False  # compresses while decoding: the press stays on after the prefill


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


# Quantization (policy/quant.py): fixed names here; "kivi-kXvY" and "EVICTION+QUANT"
# (an eviction press, then quantization of what it kept) are parsed by policy_spec.
def _quant_specs() -> dict[str, PolicySpec]:
    return {name: PolicySpec(name, "quant", None, shared_prefill=False, quant=name,
                             description=text) for name, text in DESCRIPTIONS.items()}


POLICIES.update(_quant_specs())
EVICTION_POLICIES = tuple(n for n, s in POLICIES.items() if s.family == "eviction")


def _parsed_spec(name: str) -> PolicySpec:
    """A composed or parameterised name; ValueError says what is wrong with it."""
    evict, quant = split_policy(name, EVICTION_POLICIES)
    if evict is None and quant is not None:
        parse_quant(quant)
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


def budget_holder(definition: PressDef) -> PressDef | None:
    """The press of the tree whose budget field the budget sets (None: no press takes one).

    The budget goes to exactly one press of the definition: the first, outer before inner and
    in list order, whose budget field (``press_catalog.Press.budget``) is not fixed in
    ``params``. So ``AdaKVPress`` around ``SnapKVPress`` sets SnapKV's ratio, and in a
    ``ComposedPress`` the first free press takes the budget while the others keep the ratios
    their ``params`` fix (kvpress's default 0.0: no compression)."""
    info = PRESSES[definition.press]
    if info.budget is not None and info.budget not in definition.params:
        return definition
    if info.fixes_budget:  # its params decide what the wrapped press keeps
        return None
    for inner in definition.inners():
        if (holder := budget_holder(inner)) is not None:
            return holder
    return None


def spec_fields(name: str, definition: PressDef) -> dict[str, Any]:
    """The ``PolicySpec`` fields for a defined policy; ValueError when no budget can reach it."""
    if budget_holder(definition) is None:
        raise ValueError(f"policy {name!r} ({definition.describe()}): no press in it takes a "
                         "budget, so kv.budgets would not change what it does; leave one press's "
                         "budget field out of params")
    presses = definition.tree()
    # Only a lone scorer is a pure function of one layer's prefill inputs (the condition for
    # the shared prefill); wrappers mask, chunk or re-rotate around the press they wrap.
    alone = len(presses) == 1 and PRESSES[definition.press].role == SCORER
    return {"name": name, "family": "eviction", "press": definition.press,
            "needs_attention_weights": any(PRESSES[p.press].attention_weights for p in presses),
            "shared_prefill": alone, "description": definition.describe(),
            "decoding": any(PRESSES[p.press].role == DECODING for p in presses),
            "definition": definition}


def register_custom(name: str, definition) -> PolicySpec:
    """Make ``name`` a policy built from ``definition``; ValueError if it shadows a built-in."""
    if name in POLICIES or "+" in name:
        raise ValueError(f"policy {name!r}: the name is taken by a built-in policy; choose "
                         "another")
    CUSTOM[name] = spec = PolicySpec(**spec_fields(name, definition))
    return spec


# Composed and parameterised names, parsed once per process: a name is looked up at every
# request, and the parse depends on nothing but the name.
_PARSED: dict[str, PolicySpec] = {}


def policy_spec(name: str) -> PolicySpec:
    try:
        return POLICIES.get(name) or CUSTOM.get(name) or _PARSED[name]
    except KeyError:
        try:
            spec = _PARSED[name] = _parsed_spec(name)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        return spec


class Setting(NamedTuple):
    """One cell of the grid: a policy at a budget (a fraction of the full cache, or a token
    count above 1). A tuple, so it unpacks as ``policy, budget`` and keys what a plain pair
    keys; ``policy_spec(setting.policy)`` is its parsed definition (parsed once)."""

    policy: str
    budget: float


def check_policies(names: list[str], budgets: list[float], quant_cfg: QuantOptions,
                   budget_tokens: list[int] = ()) -> None:
    """Config-time check of every policy x budget cell; ValueError names what cannot run."""
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
