"""Is a policy integrated correctly with this model? Checked before any of its requests run.

The failure this exists for: kvpress hooks every layer of Gemma 3's text model, sliding-window
layers included, whose mask works by cache index; every compressed answer was then garbage and
was reported as the press's collapse. A harness fault must never read as a compression effect,
so before a model x policy runs, on one warm-up prompt (a synthetic needle task):

* ``bounded_layers``: the policy compressed no sliding-window layer (the model's ``layer_types``
  or its attention modules' ``is_sliding``);
* ``applied``: at budget 0.5 it compressed some layer at all (a press that silently does
  nothing, such as a pipeline-only press in this engine, would report the full cache's
  accuracy as its own); masking presses, which keep every token by design, are exempt, and a
  decoding press passes when its hooks see the decoding steps;
* ``mild_budget``: at budget 0.9 the next-token distribution stays close to the full cache's
  (KL in nats at most ``max_kl``). Measured values are stored with the verdict.

Quantization policies are the project's own caches (tested against exact attention in
``tests/kv``); only presses are checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kv_transition.data.synthetic import make_example
from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.session import attention_mode, layer_record
from kv_transition.policy.spec import policy_spec
from kv_transition.press_catalog import PRESSES

WARMUP_TOKENS = 256
APPLIED_BUDGET = 0.5
MILD_BUDGET = 0.9
# A correct press at budget 0.9 keeps the next-token distribution close to the full cache's;
# a broken one scrambles it. A loose bound: it must never fail a correct integration.
MAX_KL = 1.0


@dataclass
class Verdict:
    policy: str
    model_class: str
    passed: bool
    checks: list[dict[str, Any]] = field(default_factory=list)

    def failure(self) -> str:
        failed = "; ".join(c["detail"] for c in self.checks if not c["passed"])
        return (f"integrity check failed for policy {self.policy!r} on {self.model_class}: "
                f"{failed}. No request of this policy was run: the harness will not report "
                "its own integration fault as a compression effect")


def sliding_layers(model) -> list[int]:
    """Layers with a bounded (sliding-window) attention."""
    types = getattr(model.config, "layer_types", None)
    if types:
        return [i for i, t in enumerate(types) if "sliding" in str(t)]
    layers = getattr(getattr(model, "model", None), "layers", [])
    return [i for i, layer in enumerate(layers) if getattr(layer.self_attn, "is_sliding", False)]


def _masks_by_design(policy: str) -> bool:
    definition = policy_spec(policy).definition
    return definition is not None and any(not PRESSES[p.press].frees_bytes
                                          for p in definition.tree())


def _warmup_ids(engine, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    example = make_example("integrity", "niah_single", 0, WARMUP_TOKENS, seed, 0.5,
                           engine.count_tokens)
    return engine.encode(GenerationRequest(example.context, example.question, max_tokens=1,
                                           answer_prefix=example.answer_prefix))


def _decoding_hooks_fire(engine, ctx: torch.Tensor, q: torch.Tensor, policy: str) -> bool:
    """A decoding press compresses only every ``compression_interval`` generated tokens (512
    by default), too many for a warm-up: check instead that its hooks see the decoding steps,
    which is what the engine owes it (it then compresses on its own schedule)."""
    state = engine.prefill(ctx, policy, APPLIED_BUDGET)
    engine.extend(state, q)
    press = getattr(state.press, "decoding_press", None) or state.press
    seen = []
    original = press.forward_hook

    def counting(module, *args, **kwargs):
        seen.append(module.layer_idx)
        return original(module, *args, **kwargs)

    press.forward_hook = counting  # kvpress registers the instance's hook when entered
    try:
        engine.decode(state, 2, 0.0, 0)
    finally:
        del press.forward_hook
    return bool(seen)


@torch.inference_mode()
def _next_token_logprobs(engine, ctx: torch.Tensor, q: torch.Tensor, policy: str,
                         budget: float) -> tuple[torch.Tensor, dict[str, Any]]:
    state = engine.prefill(ctx, policy, budget)
    engine.extend(state, q)
    return torch.log_softmax(state.next_logits.float(), -1), layer_record(
        state.cache, state.n_positions, engine.model)


def check_policy(engine, policy: str, max_kl: float = MAX_KL) -> Verdict:
    """Run the three checks for ``policy`` on ``engine``'s model (an HFEngine)."""
    model = engine.model
    verdict = Verdict(policy, type(model).__name__, True)
    ctx, q = _warmup_ids(engine)
    try:
        with attention_mode(model, policy):
            full, _ = _next_token_logprobs(engine, ctx, q, "full", 1.0)
            _, half = _next_token_logprobs(engine, ctx, q, policy, APPLIED_BUDGET)
            mild, _ = _next_token_logprobs(engine, ctx, q, policy, MILD_BUDGET)
    except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
        verdict.passed = False
        verdict.checks.append({"check": "runs", "passed": False,
                               "detail": f"the press raised {exc.__class__.__name__} on the "
                                         f"warm-up prompt: {str(exc).splitlines()[0]}"})
        return verdict
    bounded = sliding_layers(model)
    touched = sorted(set(half["layers_compressed"]) & set(bounded))
    verdict.checks.append({
        "check": "bounded_layers", "passed": not touched, "sliding_layers": bounded,
        "layers_compressed": half["layers_compressed"],
        "detail": f"it compressed sliding-window layers {touched}, whose attention mask works "
                  "by cache index" if touched else "no sliding-window layer compressed"})
    applied = bool(half["layers_compressed"]) or _masks_by_design(policy) or \
        policy_spec(policy).decoding and _decoding_hooks_fire(engine, ctx, q, policy)
    verdict.checks.append({
        "check": "applied", "passed": applied,
        "detail": f"at budget {APPLIED_BUDGET} it compressed no layer: the press did nothing "
                  "in this engine" if not applied else "compressed at budget 0.5"})
    kl = float(torch.sum(full.exp() * (full - mild)))
    verdict.checks.append({
        "check": "mild_budget", "passed": kl <= max_kl, "kl_nats": round(kl, 6),
        "max_kl": max_kl,
        "detail": f"at budget {MILD_BUDGET} the next-token distribution moved {kl:.2g} nats "
                  f"from the full cache's (allowed {max_kl})"})
    verdict.passed = all(c["passed"] for c in verdict.checks)
    return verdict
