"""Quantized KV caches as transformers cache classes, and the hooks that fill them.

A layer goes through two phases:

* **prefill** (not yet sealed): it behaves exactly like ``DynamicLayer``, so attention runs on
  the full-precision keys and values (KIVI's full-precision prefill) and a kvpress press can
  read and overwrite ``layer.keys`` / ``layer.values`` as it does for any dynamic cache;
* **sealed**: a forward hook registered *after* the press's hook seals each layer as soon as
  its attention (and the press) ran, moving the tokens that leave the residual into quantized
  storage. From then on ``update`` returns dequantized history + residual + the new tokens in
  full precision, and re-applies the residual rule after every step.

``layer.keys`` / ``layer.values`` always hold the full-precision residual; the quantized history
lives in ``qkeys`` / ``qvalues``. ``stored_bytes`` counts what is really held.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch
from transformers.cache_utils import Cache, DynamicLayer

from kv_transition.kv.bounded import applying
from kv_transition.kv.quant.accounting import kv_shape
from kv_transition.kv.quant.quantizers import QuantTensor, quantize
from kv_transition.policy.widths import LayerSpec, TensorSpec, quantized_tokens


def resident(t: torch.Tensor | None) -> int:
    return 0 if t is None or t.dim() != 4 else t.shape[-2]


def _spill(history: QuantTensor | None, residual: torch.Tensor, spec: TensorSpec,
           keep: int) -> tuple[QuantTensor | None, torch.Tensor]:
    """Quantize the oldest residual tokens that the rule says must leave it."""
    n = quantized_tokens(residual.shape[-2], spec, keep)
    if n == 0:
        return history, residual
    chunk = quantize(residual[..., :n, :], spec.bits, spec.axis, spec.group)
    # clone: a slice would keep the whole old residual alive behind the new, smaller one
    return (chunk if history is None else history.cat(chunk)), residual[..., n:, :].clone()


def _joined(history: QuantTensor | None, *parts: torch.Tensor) -> torch.Tensor:
    full = [] if history is None else [history.dequantize(parts[0].dtype)]
    return torch.cat(full + [p for p in parts if p.numel()], dim=-2)


class Unsupported:
    """Beam search and cropping would have to edit packed codes; nothing here needs them."""

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support beam search or cropping")

    crop = batch_repeat_interleave = batch_select_indices = reorder_cache = _refuse


class QuantizedKVLayer(Unsupported, DynamicLayer):
    """Uniform (intN) or KIVI quantization of one layer, per ``LayerSpec``."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.qkeys: QuantTensor | None = None
        self.qvalues: QuantTensor | None = None
        self.sealed = False

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.sealed:  # prefill: full precision, what attention and the press see
            return super().update(key_states, value_states, cache_kwargs)
        keys = _joined(self.qkeys, self.keys, key_states)
        values = _joined(self.qvalues, self.values, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self._spill()
        return keys, values

    def seal(self) -> None:
        """Prefill (and any press) is done: quantize what leaves the residual from now on."""
        if self.is_initialized and self.keys.dim() == 4:
            self.sealed = True
            self._spill()

    def _spill(self) -> None:
        keep = self.spec.residual
        self.qkeys, self.keys = _spill(self.qkeys, self.keys, self.spec.key, keep)
        self.qvalues, self.values = _spill(self.qvalues, self.values, self.spec.value, keep)

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return (self.qkeys.n_tokens if self.qkeys else 0) + resident(self.keys)

    def stored_bytes(self) -> int:
        """Packed codes + scales + zero-points + full-precision residual, as held now."""
        quant = sum(q.nbytes for q in (self.qkeys, self.qvalues) if q is not None)
        resid = sum(t.nbytes for t in (self.keys, self.values) if resident(t))
        return quant + resid

    def payload_bits(self) -> int:
        quant = sum(q.payload_bits for q in (self.qkeys, self.qvalues) if q is not None)
        return quant + 16 * sum(t.numel() for t in (self.keys, self.values) if resident(t))

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values attention would read now (for validation)."""
        return _joined(self.qkeys, self.keys), _joined(self.qvalues, self.values)

    def residual_lengths(self) -> tuple[int, int]:
        return resident(self.keys), resident(self.values)


class QuantizedKVCache(Cache):
    """One ``QuantizedKVLayer`` per model layer; sealed layer by layer by ``sealing``."""

    def __init__(self, num_layers: int, spec: LayerSpec):
        super().__init__(layers=[QuantizedKVLayer(spec) for _ in range(num_layers)])
        self.spec = spec

    def seal_layer(self, module: torch.nn.Module, kwargs: dict[str, Any]) -> None:
        self.layers[module.layer_idx].seal()


def attention_modules(model: Any) -> list[torch.nn.Module]:
    # the same attention modules kvpress hooks
    inner = model.model.language_model if hasattr(model.model, "language_model") else model.model
    return [layer.self_attn for layer in inner.layers]


@contextmanager
def sealing(model: Any, cache: Any) -> Iterator[None]:
    """Seal each layer of ``cache`` right after its attention ran during the prefill."""
    def hook(module, args, kwargs, output):
        cache.seal_layer(module, kwargs)
        return output

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in attention_modules(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def compressing(model: Any, press: Any, cache: Any) -> Iterator[None]:
    """The prefill context: the press (if any) first, then quantization of what it kept.

    Hooks on a module run in registration order, so entering the press first makes every
    layer's quantization see the press's output: eviction then quantization.
    """
    with ExitStack() as stack:
        if press is not None:
            stack.enter_context(applying(press, model))
        if hasattr(cache, "seal_layer"):
            stack.enter_context(sealing(model, cache))
        yield


def num_cache_layers(config: Any) -> int:
    return kv_shape(config)[0]
