"""Quantization policy names, their bit widths, and how a budget maps onto them.

Names (``kv.policies``):
  ``int8 int4 int3 int2``  uniform widths, fixed by the name
  ``int``                 uniform, width picked from the budget
  ``kivi-kXvY``           KIVI with X-bit keys and Y-bit values (X, Y in 2, 4, 8)
  ``kivi``                KIVI; widths from ``kv.quant.key_bits/value_bits`` when set,
                          otherwise picked from the budget
  ``adaptive``            SmartKV-style per-token widths in {2, 3, 4, 8} solved under the budget
  ``EVICTION+QUANT``      an eviction press, then quantization of what it kept (``snapkv+int4``)

Budgets (DESIGN.md: a budget is a fraction of the 16-bit cache):
  * a width fixed by a name or the config has the *nominal* budget bits/16 (int4 = 0.25,
    K2V4 = 0.1875) and runs at every budget at or above it: the budget is a cap, and each
    request records the nominal figure and the measured true ratio next to it. Below its nominal
    budget it cannot run, which is a config error;
  * ``int`` and ``kivi`` without widths pick the widest width whose *true* steady-state ratio
    (codes + float16 scale and zero-point per group) fits the budget;
  * ``adaptive`` treats the budget as the true ratio, metadata included, per layer and request;
  * in ``EVICTION+QUANT`` the quantization widths must be named, and the press keeps
    min(1, budget / nominal) of the tokens, so the budget is the product of the two.

No torch here: config validation checks names and budgets with these rules, and
``kv/quant/factory.py`` builds the caches from what they resolve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Protocol

from kv_transition.policy.widths import (LayerSpec, TensorSpec, bits_per_element,
                                         steady_true_ratio, token_group)

FIXED_UNIFORM = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}
UNIFORM_WIDTHS = (8, 4, 3, 2)  # what ``int`` chooses from, widest first
KIVI_WIDTHS = (2, 4, 8)
# what plain ``kivi`` chooses from, widest first; keys take the lower width, as in K2V4
KIVI_CANDIDATES = ((8, 8), (4, 8), (4, 4), (2, 4), (2, 2))
ADAPTIVE_WIDTHS = (2, 3, 4, 8)
BUDGET_EPS = 1e-9
_KIVI_NAME = re.compile(r"^kivi-k(\d+)v(\d+)$")
_INT_NAME = re.compile(r"^int\d+$")
DESCRIPTIONS = {
    "int8": "uniform 8-bit keys and values, float16 scale and zero-point per group",
    "int4": "uniform 4-bit keys and values, float16 scale and zero-point per group",
    "int3": "uniform 3-bit keys and values, float16 scale and zero-point per group",
    "int2": "uniform 2-bit keys and values, float16 scale and zero-point per group",
    "int": "uniform quantization at the widest width whose true ratio fits the budget",
    "kivi": "KIVI: per-channel keys, per-token values, full-precision recent tokens",
    "adaptive": "SmartKV-style per-token widths (2/3/4/8 bits) by attention importance",
}
NAMES_HELP = ("int8, int4, int3, int2, int, kivi, kivi-kXvY (X, Y in 2, 4, 8), adaptive, or "
              "EVICTION+QUANT such as snapkv+int4")


class QuantOptions(Protocol):
    """What these rules read of ``settings.QuantConfig`` (``kv.quant``), which sits above them."""

    group_size: int
    residual_length: int
    axis: str
    key_bits: int | None
    value_bits: int | None


@dataclass(frozen=True)
class QuantPolicy:
    name: str
    kind: str  # "int" | "kivi" | "adaptive"
    key_bits: int | None  # None: picked from the budget (per token for adaptive)
    value_bits: int | None
    bits_from: str  # "name" | "config" | "budget"

    @property
    def fixed(self) -> bool:
        return self.key_bits is not None

    @property
    def nominal(self) -> float | None:
        """Payload bits / 16: the budget the name promises."""
        return (self.key_bits + self.value_bits) / 32 if self.fixed else None


def is_quant_name(name: str) -> bool:
    return (name in FIXED_UNIFORM or name in ("int", "kivi", "adaptive")
            or bool(_KIVI_NAME.match(name) or _INT_NAME.match(name)))


def kivi_width_error(key_bits: int, value_bits: int) -> str | None:
    bad = [b for b in (key_bits, value_bits) if b not in KIVI_WIDTHS]
    if not bad:
        return None
    return (f"KIVI packs codes into 32-bit words, so a width must divide 32: {bad[0]} bits is "
            f"not possible; allowed key/value bits: {', '.join(map(str, KIVI_WIDTHS))} (3 bits "
            "exist only for the uniform int3 and adaptive caches)")


def parse_quant(name: str, cfg: QuantOptions | None = None) -> QuantPolicy:
    """The quantization policy a name means; ValueError for a name that cannot be built.

    Without ``cfg`` (the name alone, as config validation checks it) plain ``kivi`` takes its
    widths from the budget, as with the default ``kv.quant``."""
    if name in FIXED_UNIFORM:
        bits = FIXED_UNIFORM[name]
        return QuantPolicy(name, "int", bits, bits, "name")
    if name == "int":
        return QuantPolicy(name, "int", None, None, "budget")
    if name == "adaptive":
        return QuantPolicy(name, "adaptive", None, None, "budget")
    if name == "kivi":
        if cfg is not None and cfg.key_bits is not None:
            return QuantPolicy(name, "kivi", cfg.key_bits, cfg.value_bits, "config")
        return QuantPolicy(name, "kivi", None, None, "budget")
    match = _KIVI_NAME.match(name)
    if match:
        key_bits, value_bits = int(match[1]), int(match[2])
        error = kivi_width_error(key_bits, value_bits)
        if error:
            raise ValueError(f"policy {name!r}: {error}")
        return QuantPolicy(name, "kivi", key_bits, value_bits, "name")
    if _INT_NAME.match(name):
        raise ValueError(f"policy {name!r}: uniform widths are "
                         f"{', '.join(f'int{b}' for b in UNIFORM_WIDTHS)}")
    raise ValueError(f"{name!r} is not a quantization policy; allowed: {NAMES_HELP}")


def split_policy(name: str, eviction_names: Iterable[str]) -> tuple[str | None, str | None]:
    """(eviction part, quantization part) of a policy name; ValueError for a bad composition."""
    if "+" not in name:
        return (None, name) if is_quant_name(name) else (name, None)
    parts = name.split("+")
    evictions = set(eviction_names)
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"policy {name!r}: compose one eviction and one quantization policy "
                         "as EVICTION+QUANT, e.g. snapkv+int4")
    evict, quant = parts
    if is_quant_name(evict) and not is_quant_name(quant):
        raise ValueError(f"policy {name!r}: quantization applies to what eviction kept; write "
                         f"{quant}+{evict}")
    if evict not in evictions:
        raise ValueError(f"policy {name!r}: {evict!r} is not an eviction policy; allowed: "
                         f"{', '.join(sorted(evictions))}")
    if quant not in FIXED_UNIFORM and not _KIVI_NAME.match(quant):
        raise ValueError(
            f"policy {name!r}: in a composition the quantization widths must be named (int8, "
            f"int4, int3, int2, kivi-kXvY); with {quant!r} the split of the budget between "
            "eviction and quantization would be ambiguous")
    return evict, quant


def eviction_keep(quant: str, budget: float) -> float:
    """In EVICTION+QUANT, the fraction of tokens the press keeps: the rest of the budget after
    the named widths' nominal ratio (never more than all of them)."""
    bits = FIXED_UNIFORM.get(quant)
    match = _KIVI_NAME.match(quant)
    nominal = bits / 16 if bits else (int(match[1]) + int(match[2])) / 32
    return min(1.0, round(budget / nominal, 6))


# ---------------------------------------------------------------- widths for a budget

def layer_spec(policy: QuantPolicy, key_bits: int, value_bits: int, cfg: QuantOptions,
               head_dim: int) -> LayerSpec:
    """Concrete widths, axes and group sizes for a model with ``head_dim`` channels per head."""
    per_token = token_group(head_dim, cfg.group_size)
    if per_token is None:
        raise ValueError(f"head_dim {head_dim} has no divisor that is a multiple of 8, so it "
                         "cannot be grouped per token")
    if policy.kind == "int":
        group = per_token if cfg.axis == "token" else cfg.group_size
        spec = TensorSpec(key_bits, cfg.axis, group)
        return LayerSpec(spec, spec, 0)
    # KIVI: keys per channel over groups of tokens, values per token, recent tokens exact
    return LayerSpec(TensorSpec(key_bits, "channel", cfg.group_size),
                     TensorSpec(value_bits, "token", per_token), cfg.residual_length)


def resolve_widths(policy: QuantPolicy, budget: float, cfg: QuantOptions,
                   head_dim: int) -> tuple[LayerSpec, bool]:
    """(spec, fits): fixed widths as given, otherwise the widest whose true ratio fits."""
    if policy.fixed:
        spec = layer_spec(policy, policy.key_bits, policy.value_bits, cfg, head_dim)
        return spec, policy.nominal <= budget + BUDGET_EPS
    candidates = ([(b, b) for b in UNIFORM_WIDTHS] if policy.kind == "int" else KIVI_CANDIDATES)
    for key_bits, value_bits in candidates:
        spec = layer_spec(policy, key_bits, value_bits, cfg, head_dim)
        if steady_true_ratio(spec) <= budget + BUDGET_EPS:
            return spec, True
    return spec, False  # the narrowest, recorded as not fitting


def adaptive_floor(group: int) -> float:
    """True ratio with every token at 2 bits (before the per-token position index)."""
    return bits_per_element(TensorSpec(min(ADAPTIVE_WIDTHS), "token", group)) / 16


def check_setting(name: str, budget: float, cfg: QuantOptions,
                  eviction_names: Iterable[str]) -> None:
    """Config-time check of one grid cell; head_dim is unknown, so groups are taken whole."""
    evict, quant = split_policy(name, eviction_names)
    if quant is None:
        return
    policy = parse_quant(quant, cfg)
    if policy.kind == "kivi" and cfg.residual_length % cfg.group_size:
        raise ValueError(
            f"kv.quant.residual_length {cfg.residual_length} must be a multiple of "
            f"kv.quant.group_size {cfg.group_size}: KIVI moves keys out of the residual in whole "
            "groups of tokens")
    if policy.kind == "adaptive":
        floor = adaptive_floor(cfg.group_size)
        if budget < floor - BUDGET_EPS:
            raise ValueError(f"policy {name!r} at budget {budget:g}: with every token at 2 bits "
                             f"its true ratio is already {floor:.4g} (group size "
                             f"{cfg.group_size}); raise the budget")
        return
    if policy.fixed:
        if evict is None and policy.nominal > budget + BUDGET_EPS:
            raise ValueError(
                f"policy {name!r} keeps {policy.key_bits}/{policy.value_bits}-bit keys/values, a "
                f"nominal budget of {policy.nominal:g}; it cannot run at budget {budget:g}. Use a "
                "narrower width, 'int' or 'kivi' (widths picked from the budget), or compose "
                f"with eviction (e.g. snapkv+{quant})")
        return
    spec, fits = resolve_widths(policy, budget, cfg, cfg.group_size)
    if not fits:
        raise ValueError(
            f"policy {name!r} at budget {budget:g}: its narrowest widths already have a true "
            f"ratio of {steady_true_ratio(spec):.4g} (codes + float16 scale and zero-point per "
            f"group of {cfg.group_size}); raise the budget or the group size")
