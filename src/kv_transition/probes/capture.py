"""Forward hooks on a transformers model's attention modules that record what the cache holds.

After an attention module runs, its layer of the cache ends with the keys and values of the
positions it just processed: rotary embedding applied to the keys, exactly what later queries
attend to and what a press would evict. The hook copies those rows for the selected KV heads.
The alternative target ``hidden`` records the hidden states entering attention (after the
layer's input norm): what K and V are projected from, a proxy and not the cache.

Hooks see every forward pass (prefill and each decode step) and use ``cache_position`` to
number positions; positions at or beyond ``max_positions`` are not recorded.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from kv_transition.errors import BadInput

CACHE_TARGETS = ("keys", "values")


def decoder_layers(model) -> list:
    """The decoder layers of a causal LM (multimodal wrappers keep them in language_model)."""
    inner = model.model
    inner = getattr(inner, "language_model", inner)
    return list(inner.layers)


def resolve_layers(spec: list[int] | str, n_layers: int) -> list[int]:
    """``probes.layers`` as sorted non-negative indices; negative ones count from the end."""
    if spec == "all":
        return list(range(n_layers))
    bad = [i for i in spec if not -n_layers <= i < n_layers]
    if bad:
        raise BadInput(f"probes.layers: {bad[0]} is out of range; the model has {n_layers} "
                       f"layers (allowed: 0..{n_layers - 1}, or -{n_layers}..-1 from the end, "
                       "or 'all')")
    return sorted({i % n_layers for i in spec})


def resolve_heads(spec: list[int] | str, n_kv_heads: int) -> list[int]:
    if spec == "all":
        return list(range(n_kv_heads))
    bad = [h for h in spec if not 0 <= h < n_kv_heads]
    if bad:
        raise BadInput(f"probes.heads: {bad[0]} is out of range; the model has {n_kv_heads} KV "
                       f"heads (allowed: 0..{n_kv_heads - 1} or 'all')")
    return sorted(set(spec))


def captured_targets(target: str) -> tuple[str, ...]:
    """Keys and values are captured together (both are the cache); hidden states alone."""
    return CACHE_TARGETS if target in CACHE_TARGETS else ("hidden",)


class KVCapture:
    """Record ``targets`` of ``layers`` (and ``heads``) into ``sink`` while attached."""

    def __init__(self, layers: list[int], heads: list[int], target: str, sink,
                 max_positions: int):
        self.layers = layers
        self.heads = heads
        self.targets = captured_targets(target)
        self.sink = sink
        self.max_positions = max_positions
        self.n_recorded = 0  # positions recorded by the first captured layer

    @contextmanager
    def attach(self, model) -> Iterator["KVCapture"]:
        layers = decoder_layers(model)
        handles = [layers[i].self_attn.register_forward_hook(self._hook, with_kwargs=True)
                   for i in self.layers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, module, args, kwargs, output) -> None:
        hidden = kwargs["hidden_states"]
        q_len = hidden.shape[1]
        positions = self._positions(kwargs.get("cache_position"), q_len, hidden.device)
        keep = positions < self.max_positions
        if not keep.any():
            return
        positions = positions[keep]
        for target in self.targets:
            rows = self._rows(module, kwargs, target, q_len)[keep]
            self.sink.append(module.layer_idx, target, positions, rows)
        if module.layer_idx == self.layers[0]:
            self.n_recorded += len(positions)

    @staticmethod
    def _positions(cache_position, q_len: int, device) -> np.ndarray:
        if cache_position is None:
            raise RuntimeError("the attention module got no cache_position; the probe needs a "
                               "transformers model that passes it (Llama, Mistral, Qwen, ...)")
        return cache_position.reshape(-1)[-q_len:].cpu().numpy()

    def _rows(self, module, kwargs, target: str, q_len: int) -> np.ndarray:
        """``[q_len, heads, dim]`` float32 for the positions of this forward pass."""
        if target == "hidden":
            return kwargs["hidden_states"][0, :, None, :].float().cpu().numpy()
        layer = kwargs["past_key_values"].layers[module.layer_idx]
        tensor = layer.keys if target == "keys" else layer.values
        rows = tensor[0, self.heads, -q_len:, :]  # [heads, q, dim]: the rows just appended
        return rows.transpose(0, 1).float().cpu().numpy()


def cache_rows(cache, layer: int, heads: list[int], target: str) -> torch.Tensor:
    """``[positions, heads, dim]`` of a DynamicCache layer (what the tests compare against)."""
    tensor = cache.layers[layer].keys if target == "keys" else cache.layers[layer].values
    return tensor[0, heads].transpose(0, 1)
