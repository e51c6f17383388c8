"""Bytes a real quantized KV cache stores, and its ratios against a 16-bit cache of its tokens.

The two ratios (payload and true) and the rules that predict them are in ``policy/widths.py``;
here they are counted from the stored tensors (``cache_accounting``), which the tests hold equal
to the prediction (``layer_bytes``).
"""

from __future__ import annotations

from typing import Any

from kv_transition.policy.widths import reference_bytes


def kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head_dim) of a transformers config."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers, heads, head_dim


def _layer_counts(layer: Any) -> tuple[int, int]:
    """(stored bytes, payload bits) of one cache layer."""
    import torch

    if hasattr(layer, "stored_bytes"):
        return layer.stored_bytes(), layer.payload_bits()
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or keys.numel() == 0:
        return 0, 0
    return keys.nbytes + values.nbytes, 16 * (keys.numel() + values.numel())


def cache_accounting(cache: Any, n_positions: int, config: Any, dtype: Any) -> dict:
    """Measured bytes and both ratios of ``cache`` after ``n_positions`` prompt positions."""
    import torch

    # lazy: kv.bounded imports torch; the report and CLI start-up read this module without it
    from kv_transition.kv.bounded import bounded_share, full_layer_tokens

    stored, payload = 0, 0
    for layer in getattr(cache, "layers", []):
        b, p = _layer_counts(layer)
        stored, payload = stored + b, payload + p
    _, heads, head_dim = kv_shape(config)
    # layer by layer: a sliding-window layer's full cache is its window, not every position
    reference = reference_bytes(sum(full_layer_tokens(config, n_positions)), head_dim, heads)
    notes: dict[str, Any] = {
        "kv_bytes_fp16_full": reference,
        "kv_bounded_share": bounded_share(config, n_positions),
        "kv_ratio_true": stored / reference if reference else None,
        "kv_ratio_payload": payload / (8 * reference) if reference else None,
    }
    if torch.finfo(dtype).bits != 16:
        notes["kv_ratio_note"] = _dtype_note(str(dtype), torch.finfo(dtype).bits)
    return notes


def _dtype_note(dtype: str, bits: int) -> str:
    return (f"ratios are against a 16-bit cache; this model stores {dtype.split('.')[-1]}, so "
            f"its full cache has a true ratio of {bits / 16:g}")


_DTYPE_BITS = {"torch.float32": 32, "torch.float16": 16, "torch.bfloat16": 16,
               "torch.float64": 64}


def ratios_from_notes(notes: dict[str, Any]) -> dict[str, Any] | None:
    """Payload and true ratios from one request's telemetry notes. Requests recorded without
    them (an unquantized cache, e.g. through the shared prefill) are derived from ``kv_ratio``
    (bytes held / the full cache in the model's dtype) and the dtype: for a plain cache the
    payload ratio is the fraction of elements kept, the true one that times dtype bits / 16."""
    keys = ("kv_ratio_payload", "kv_ratio_true", "kv_budget_nominal", "kv_ratio_note")
    if notes.get("kv_ratio_true") is not None:
        return {k: notes.get(k) for k in keys}
    bits = _DTYPE_BITS.get(notes.get("dtype"))
    if notes.get("kv_ratio") is None or bits is None:
        return None
    return {"kv_ratio_payload": notes["kv_ratio"], "kv_ratio_true": notes["kv_ratio"] * bits / 16,
            "kv_budget_nominal": None,
            "kv_ratio_note": _dtype_note(notes["dtype"], bits) if bits != 16 else None}
