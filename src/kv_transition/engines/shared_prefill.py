"""One prefill, many budgets: compress each layer once per setting during a single forward.

Why this is exact: a kvpress prefill press compresses layer l's cache *after* layer l's
attention ran on the full keys, and no later layer reads layer l's cache during prefill, so the
hidden states, the logits and every layer's press inputs are the same whatever the budget. We
therefore run the forward once, and in each layer's hook call every setting's own press on the
same inputs, writing the result into that setting's own cache. The kept indices, the caches and
so the greedy tokens are identical to separate prefills (tests/engines/test_shared_prefill.py).

Only presses whose compression is a pure function of the layer's prefill inputs qualify
(``PolicySpec.shared_prefill``); others fall back to a fresh prefill, decided by that flag.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import torch

from kv_transition.engines.base import GenerationRequest, GenerationResult
from kv_transition.engines.hf import request_failures
from kv_transition.engines.session import PrefillState, cache_bytes, clear_masks
from kv_transition.kv.bounded import sliding_layer_ids
from kv_transition.kv.registry import make_press
from kv_transition.policy.spec import Setting, policy_spec



def can_share(policy: str) -> bool:
    spec = policy_spec(policy)
    return spec.family in ("baseline", "eviction") and spec.shared_prefill


@dataclass
class _LayerHook:
    presses: dict[Setting, Any]  # None for the full cache
    caches: dict[Setting, Any]
    compress_s: dict[Setting, float] = field(default_factory=dict)

    def __call__(self, module, inputs, kwargs, output):
        from kvpress.presses.base_press import is_prefilling
        from kvpress.utils import extract_keys_and_values

        hidden = kwargs["hidden_states"]
        if not is_prefilling(kwargs["cache_position"], hidden.shape[1]):
            return output
        keys, values = extract_keys_and_values(kwargs["past_key_values"], module.layer_idx)
        for setting, press in self.presses.items():
            start = time.perf_counter()
            k, v = (keys, values) if press is None else press.compress(
                module, hidden, keys, values, output[1], kwargs)
            self.caches[setting].update(k, v, module.layer_idx)
            self.compress_s[setting] = self.compress_s.get(setting, 0.0) + time.perf_counter() - start
        return output


@contextmanager
def _hooked(model, hook: _LayerHook) -> Iterator[None]:
    for press in hook.presses.values():
        if press is not None:
            press.post_init_from_model(model)
    language_model = model.model.language_model if hasattr(model.model, "language_model") else model.model
    handles = []
    try:
        for layer in language_model.layers:
            layer.self_attn.rotary_emb = language_model.rotary_emb  # some presses read it, as kvpress does
            handles.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def prefill_settings(engine, ids: torch.Tensor, settings: list[Setting]):
    """One forward over ``ids``; returns ({setting: PrefillState}, forward seconds, compress seconds)."""
    from transformers import DynamicCache

    presses, applied = {}, {}
    for policy, budget in settings:
        presses[(policy, budget)], applied[(policy, budget)] = make_press(
            policy, budget, ids.shape[1], engine.press_options)
    clear_masks(engine.model)  # shared presses drop tokens; no earlier request's masks may stay
    hook = _LayerHook(presses, {s: DynamicCache() for s in settings})
    scratch = DynamicCache()  # the forward's own cache; each setting gets its copy in the hook
    start = engine.now()
    with _hooked(engine.model, hook):
        out = engine.model(input_ids=ids, past_key_values=scratch, use_cache=True, logits_to_keep=1)
    seconds = engine.now() - start
    del scratch
    states = {}
    for s in settings:
        state = PrefillState(hook.caches[s], out.logits[0, -1].clone(), ids.shape[1],
                             applied=applied[s])
        state.kv_bytes = cache_bytes(state.cache)[0]
        states[s] = state
    return states, seconds, hook.compress_s


def generate_settings(engine, req: GenerationRequest,
                      settings: list[Setting]) -> dict[Setting, GenerationResult]:
    """Answer ``req`` under every setting from one shared prefill of the context."""
    if any(not can_share(p) for p, _ in settings):
        raise ValueError("generate_settings needs policies that declare shared_prefill")
    if sliding_layer_ids(engine.model.config):
        # each setting's copy would need its own window-bounded sliding layers and the
        # full-attention-only hooks (kv/bounded.py): such models take a fresh prefill per
        # setting, and its answers carry no shared_prefill note
        return {s: engine.generate(replace(req, policy=s[0], budget=s[1])) for s in settings}
    # H2O needs eager attention, whose weights other presses would then read instead of
    # recomputing: keep the groups apart so each matches its own fresh prefill bit for bit.
    eager = [s for s in settings if policy_spec(s[0]).needs_attention_weights]
    rest = [s for s in settings if s not in eager]
    results = {}
    for group, policy in ((rest, "full"), (eager, "h2o")):
        if group:
            engine.use_attention_for(policy)
            results.update(_generate_group(engine, req, group))
    return results


def _generate_group(engine, req: GenerationRequest,
                    settings: list[Setting]) -> dict[Setting, GenerationResult]:
    ctx_ids, q_ids = engine.encode(req)
    engine.check_length(ctx_ids, q_ids, req.max_tokens)
    engine.reset_peak()
    prompt = torch.cat([ctx_ids, q_ids], dim=1) if req.query_aware else ctx_ids
    # the same failures a fresh prefill records, recorded the same way for the whole group
    with request_failures("shared prefill of " + ", ".join(f"{p}@{b}" for p, b in settings)):
        states, forward_s, compress_s = _group_states(engine, req, prompt, settings)
        overhead = sum(compress_s.values())
        return {s: _finish(engine, req, states[s], forward_s - overhead + compress_s.get(s, 0.0),
                           ctx_ids, q_ids, len(settings)) for s in settings}


def _group_states(engine, req: GenerationRequest, prompt: torch.Tensor, settings: list[Setting]):
    """The group's prefilled states: copies of those held for an earlier question on the same
    context, or one shared prefill (held for the next question when the request names its
    context; a query-aware prompt holds the question, so it is never reused)."""
    key = None if req.query_aware else req.context_key
    held = engine.recall_context(key, prompt, tuple(settings))
    if held is not None:
        return held, 0.0, {}
    states, forward_s, compress_s = prefill_settings(engine, prompt, settings)
    engine.keep_context(key, prompt, tuple(settings), states)
    return states, forward_s, compress_s


def _finish(engine, req: GenerationRequest, state, prefill_s: float, ctx_ids, q_ids,
            group: int) -> GenerationResult:
    """Question (if asked after compression) and decoding for one setting; times are its own."""
    start = engine.now()
    if not req.query_aware:
        engine.extend(state, q_ids)
    state.seconds = prefill_s + (engine.now() - start)
    engine.settle(state)
    tokens, finish, steps = engine.decode(state, req.max_tokens, req.temperature, req.seed)
    state.seconds_to_first = state.seconds + (steps[0] if steps else 0.0)
    scope = engine.peak_mb()[1]
    return engine.result(req, state, tokens, finish, steps, ctx_ids, q_ids,
                         state.seconds + sum(steps), shared_prefill=True,
                         shared_prefill_group=group,
                         peak_mem_scope=scope if scope == "process" else "shared-prefill group")
