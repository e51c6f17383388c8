"""Policies defined in the config from any kvpress press (``press_catalog.PressDef``).

The budget goes to exactly one press of the definition: the first, outer before inner and in
list order, whose budget field (``press_catalog.Press.budget``) is not fixed in ``params``. So
``AdaKVPress`` around ``SnapKVPress`` sets SnapKV's ratio, and in a ``ComposedPress`` the first
free press takes the budget while the others keep the ratios their ``params`` fix (kvpress's
default 0.0: no compression).
"""

from __future__ import annotations

from typing import Any

from kv_transition.errors import BadInput
from kv_transition.press_catalog import (LIST_INNER, PRESSES, RATIO, SCORER, PressDef,
                                         observation_window)


def budget_holder(definition: PressDef) -> PressDef | None:
    """The press of the tree whose budget field the budget sets (None: no press takes one)."""
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
    """The registry's ``PolicySpec`` fields for a defined policy; ValueError when no budget
    can reach it."""
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
            "definition": definition}


def _budget_value(definition: PressDef, budget: float, n_context_tokens: int) -> tuple[str, Any]:
    info = PRESSES[definition.press]
    if info.budget_kind == RATIO:
        return info.budget, round(1.0 - budget, 6)
    return info.budget, max(1, round(budget * n_context_tokens))


def _kwargs(definition: PressDef, holder: PressDef, budget: float, n_context_tokens: int) -> dict:
    kwargs = dict(definition.params)
    if definition is holder:
        field, value = _budget_value(definition, budget, n_context_tokens)
        kwargs[field] = value
    if definition.press in ("SnapKVPress", "PyramidKVPress"):  # as for the built-in policies
        from kvpress import SnapKVPress

        default = kwargs.get("window_size", SnapKVPress.window_size)
        kwargs["window_size"] = observation_window(default, n_context_tokens)
    return kwargs


def _build(definition: PressDef, holder: PressDef, budget: float, n_context_tokens: int):
    """(press object, applied record) for one node of the definition and what it wraps."""
    import kvpress

    info = PRESSES[definition.press]
    kwargs = _kwargs(definition, holder, budget, n_context_tokens)
    applied: dict[str, Any] = {"press": definition.press, "params": dict(kwargs)}
    if definition.inner is not None:
        built = [_build(i, holder, budget, n_context_tokens) for i in definition.inners()]
        field = info.inner[0]
        kwargs[field] = [b[0] for b in built] if field in LIST_INNER else built[0][0]
        applied["inner"] = [b[1] for b in built] if field in LIST_INNER else built[0][1]
    press = getattr(kvpress, definition.press)(**kwargs)
    if info.download:
        _explain_downloads(press, definition.press, info.download)
    return press, applied


def _explain_downloads(press, name: str, what: str) -> None:
    """A press that fetches from the Hub fails offline with a clear error, not a traceback
    recorded as that request's failure (which would read as a compression effect)."""
    original = press.post_init_from_model

    def post_init_from_model(model):
        try:
            return original(model)
        except Exception as exc:  # noqa: BLE001 - any loader error means the same to the user
            raise BadInput(
                f"{name} needs {what} from the Hugging Face Hub and could not load it "
                f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                "Offline: put a copy in the Hugging Face cache (HF_HOME) on a machine with "
                "network, or give the local path where the press has a parameter for it") from exc

    press.post_init_from_model = post_init_from_model


def build_press(name: str, definition: PressDef, budget: float, n_context_tokens: int):
    """``(press, applied)`` for the policy ``name`` defined by ``definition``, at ``budget`` < 1."""
    holder = budget_holder(definition)
    press, tree = _build(definition, holder, budget, n_context_tokens)
    field, value = _budget_value(holder, budget, n_context_tokens)
    return press, {"policy": name, "budget_field": f"{holder.press}.{field}",
                   field: value, "press_tree": tree}
