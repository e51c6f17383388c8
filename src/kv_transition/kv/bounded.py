"""Presses on models whose attention layers are not all alike (Gemma 3's sliding-window layers).

kvpress 0.5.5 leaves sliding-window layers alone only for ``Gemma3ForConditionalGeneration``;
on the text-only ``Gemma3ForCausalLM`` it hooks every layer. A press on a sliding layer keeps
tokens in score order while that layer's mask works by cache index, so its attention reads an
arbitrary window of what was kept and every answer turns to garbage, which the harness would
then report as the press's effect (issue 16). Three things make the text model work, each
measured in ``../shared/notes/gemma3-270m-probe.md``:

* the press hooks only the layers with unbounded (full) attention;
* the cache is built from the model's config, so sliding layers hold at most their window
  (and the KV accounting counts what they really hold);
* the rotary embedding a press reads (``module.rotary_emb(x, position_ids)``) is told the
  layer's type, since Gemma 3 keeps one RoPE base per type (10k sliding, 1M global) and fails
  without it.

Models with one kind of attention (Llama, Qwen, Mistral) take the plain path unchanged.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch


def _text(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def layer_types(config: Any) -> list[str] | None:
    types = getattr(_text(config), "layer_types", None)
    return list(types) if types else None


def sliding_layer_ids(config: Any) -> list[int]:
    """Layers whose attention sees only a bounded window of recent tokens."""
    return [i for i, t in enumerate(layer_types(config) or []) if "sliding" in str(t)]


def sliding_window(config: Any) -> int | None:
    return getattr(_text(config), "sliding_window", None) if sliding_layer_ids(config) else None


def full_layer_tokens(config: Any, n_positions: int) -> list[int]:
    """Tokens each layer of the uncompressed cache holds after ``n_positions``: a sliding
    layer keeps its last ``window - 1`` (transformers' ``DynamicSlidingWindowLayer``)."""
    window, sliding = sliding_window(config), set(sliding_layer_ids(config))
    return [min(window - 1, n_positions) if i in sliding and window else n_positions
            for i in range(_text(config).num_hidden_layers)]


def bounded_share(config: Any, n_positions: int) -> float:
    """The share of the uncompressed cache held by window-bounded layers, which no press
    compresses: at budget b a press can at best bring the cache to share + (1 - share) * b."""
    tokens = full_layer_tokens(config, n_positions)
    sliding = sum(tokens[i] for i in sliding_layer_ids(config))
    return sliding / sum(tokens) if sum(tokens) else 0.0


def new_cache(config: Any):
    """An empty cache for ``config``: sliding layers bounded to their window where there are
    any (a plain ``DynamicCache`` otherwise, as before)."""
    from transformers import DynamicCache

    return DynamicCache(config=config) if sliding_layer_ids(config) else DynamicCache()


def language_model(model: Any) -> Any:
    inner = model.model
    return inner.language_model if hasattr(inner, "language_model") else inner


class _TypedRotary(torch.nn.Module):
    """``rotary_emb(x, position_ids)`` for one layer type, the call kvpress makes."""

    def __init__(self, rotary: torch.nn.Module, layer_type: str):
        super().__init__()
        self.rotary, self.layer_type = rotary, layer_type

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        return self.rotary(x, position_ids, self.layer_type)


def _kvpress_skips_sliding(model: Any) -> bool:
    from transformers import Gemma3ForConditionalGeneration

    return isinstance(model, Gemma3ForConditionalGeneration)


class _UntestedFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "not tested" not in record.getMessage()


@contextmanager
def _quiet_untested() -> Iterator[None]:
    """kvpress warns "Model ... not tested" on every entry; on this path the harness has made
    the model work (and the integrity check verifies it), so one warning per prefill is noise."""
    logger, quiet = logging.getLogger("kvpress.presses.base_press"), _UntestedFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@contextmanager
def applying(press: Any, model: Any) -> Iterator[None]:
    """``press(model)``, hooked on the full-attention layers only where the model has sliding
    ones. kvpress registers its hooks on entry by walking ``layers``, so the walk is shown the
    full-attention layers while it registers; the forward then runs every layer as always."""
    sliding = set(sliding_layer_ids(model.config))
    if not sliding or _kvpress_skips_sliding(model):
        with press(model):
            yield
        return
    lm = language_model(model)
    every, types = lm.layers, layer_types(model.config)
    with ExitStack() as stack:
        stack.enter_context(_quiet_untested())
        lm.layers = torch.nn.ModuleList([layer for i, layer in enumerate(every)
                                         if i not in sliding])
        try:
            stack.enter_context(press(model))
        finally:
            lm.layers = every
        for i, layer in enumerate(every):
            if i not in sliding and hasattr(lm.rotary_emb, f"{types[i]}_inv_freq"):
                layer.self_attn.rotary_emb = _TypedRotary(lm.rotary_emb, types[i])
        yield


def extend_masks(model: Any, cache: Any, n_new: int, position_ids: torch.Tensor) -> dict | None:
    """Attention masks for feeding ``n_new`` tokens in one forward after compression, or None
    where one forward cannot be masked right (full-attention layers of different lengths).

    The model numbers new tokens from layer 0's count of positions seen, a sliding layer's
    here, while the compressed full-attention layers hold fewer tokens: their default mask
    would let a new token see the ones after it. transformers' own mask builders are called
    once per attention type, each with the numbering its layers' keys really have."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    config, sliding = _text(model.config), set(sliding_layer_ids(model.config))
    full = {cache.layers[i].get_seq_length() for i in range(len(cache.layers)) if i not in sliding}
    if not sliding or len(full) != 1:
        return None
    kept, seen = full.pop(), cache.get_seq_length()
    embeds = torch.empty((1, n_new, config.hidden_size), dtype=model.dtype, device=model.device)
    common = {"config": config, "inputs_embeds": embeds, "attention_mask": None,
              "past_key_values": cache, "position_ids": position_ids}
    count = lambda start: torch.arange(start, start + n_new, device=model.device)  # noqa: E731
    return {"full_attention": create_causal_mask(cache_position=count(kept), **common),
            "sliding_attention": create_sliding_window_causal_mask(cache_position=count(seen),
                                                                   **common)}
