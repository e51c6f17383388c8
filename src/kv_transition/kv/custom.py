"""Presses built from policies defined in the config from any kvpress press
(``press_catalog.PressDef``).

The budget goes to exactly one press of the definition (``policy.spec.budget_holder``): the
first, outer before inner and in list order, whose budget field is not fixed in ``params``.
The definition was checked and registered as a policy at config load (``policy/spec.py``).
"""

from __future__ import annotations

from typing import Any

from kv_transition.errors import BadInput
from kv_transition.policy.spec import budget_holder
from kv_transition.press_catalog import LIST_INNER, PRESSES, RATIO, PressDef, observation_window


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
        if len(info.inner) > 1:  # one press per field (PrefillDecodingPress)
            kwargs.update({f: b[0] for f, b in zip(info.inner, built)})
            applied["inner"] = [b[1] for b in built]
        else:
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
