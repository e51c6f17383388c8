"""The in-process transformers engine: the engine protocol over a ``ModelSession``.

A request is three separable steps, so a sweep can reuse one prefill for many budgets:
``prefill`` (context through the model under the kvpress press, which compresses each layer's
cache as the layer finishes), ``extend`` (the question after compression, when not query-aware)
and ``decode`` (greedy or seeded sampling from the compressed cache); the session
(``engines/session.py``) implements them, this module turns a request into them and their
outcome into a result.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from kv_transition.data import prompt as prompt_tpl
from kv_transition.engines.base import (EngineError, GenerationRequest, GenerationResult,
                                         median_or_none)
from kv_transition.engines.session import ModelSession, PrefillState, cache_bytes
from kv_transition.policy.spec import Setting


class HFEngine(ModelSession):
    name = "hf"

    # -- prompt ----------------------------------------------------------------------------
    def prompt_texts(self, req: GenerationRequest) -> tuple[str, str]:
        """(context text, question text); the boundary is where compression stops."""
        if req.raw_prompt is not None:
            return req.raw_prompt, ""
        context = prompt_tpl.context_part(req.context)
        question = prompt_tpl.question_part(req.question)
        if not self.use_chat:
            return context, prompt_tpl.question_part(req.question, req.answer_prefix)
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": context + question}], tokenize=False,
            add_generation_prompt=True)
        split = rendered.rfind(question)
        prefix = f" {req.answer_prefix}" if req.answer_prefix else ""
        return rendered[:split], rendered[split:] + prefix

    def encode(self, req: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor]:
        context, question = self.prompt_texts(req)
        # special tokens (BOS) once, at the start; the chat template already carries them
        ctx = self.tokenizer(context, add_special_tokens=not self.use_chat).input_ids
        q = self.tokenizer(question, add_special_tokens=False).input_ids
        as_tensor = lambda ids: torch.tensor([ids], dtype=torch.long, device=self.device)  # noqa: E731
        return as_tensor(ctx), as_tensor(q)

    def warmup(self, policy: str, budget: float) -> None:
        """One untimed request, so the first timed one does not pay for lazy init and caches."""
        filler = " ".join(["the"] * 256)
        try:
            self.generate(GenerationRequest(context=filler, question="the", max_tokens=2,
                                            policy=policy, budget=budget))
        except EngineError:
            pass  # the real requests will record whatever is wrong

    # -- one request ----------------------------------------------------------------------
    def generate(self, req: GenerationRequest,
                 on_token: Callable[[int], None] | None = None) -> GenerationResult:
        ctx_ids, q_ids = self.encode(req)
        self.check_length(ctx_ids, q_ids, req.max_tokens)
        self.use_attention_for(req.policy)
        self.reset_peak()
        start = self.now()
        with request_failures(f"{req.policy}@{req.budget}"):
            state, tokens, finish, steps = self._run(req, ctx_ids, q_ids, on_token)
        latency = self.now() - start
        return self.result(req, state, tokens, finish, steps, ctx_ids, q_ids, latency)

    def check_length(self, ctx_ids: torch.Tensor, q_ids: torch.Tensor, max_tokens: int) -> None:
        n_prompt = ctx_ids.shape[1] + q_ids.shape[1]
        if self.max_positions and n_prompt + max_tokens > self.max_positions:
            raise EngineError(f"prompt of {n_prompt} tokens + {max_tokens} new tokens exceeds "
                              f"the model's {self.max_positions} positions", transient=False)

    def result(self, req: GenerationRequest, state: PrefillState, tokens: list[int], finish: str,
               steps: list[float], ctx_ids: torch.Tensor, q_ids: torch.Tensor, latency: float,
               **extra_notes: Any) -> GenerationResult:
        """Package one answered request: text, timings, memory and KV accounting."""
        text = self.tokenizer.decode([t for t in tokens if t not in self.eos_ids],
                                     skip_special_tokens=True).strip()
        peak, scope = self.peak_mb()
        ttfb = state.seconds_to_first
        # what the cache holds once the answer is written: a decoding press shrinks it while
        # decoding, and a longer answer grows any cache (a compressed model that writes more
        # can cost more overall)
        end_bytes, end_tokens = cache_bytes(state.cache)
        return GenerationResult(
            text=text, finish_reason=finish, prompt_tokens=int(ctx_ids.shape[1] + q_ids.shape[1]),
            completion_tokens=len(tokens), latency_s=latency, ttfb_s=ttfb, prefill_s=state.seconds,
            decode_s=latency - ttfb, peak_mem_mb=peak, kv_bytes=state.kv_bytes,
            raw={"token_ids": tokens, "applied": state.applied},
            # the threads torch really used: oversubscribed threads distort every latency
            notes={"peak_mem_scope": scope, "device": str(self.device), "dtype": str(self.dtype),
                   "torch_threads": torch.get_num_threads(),
                   "context_tokens": int(ctx_ids.shape[1]), "question_tokens": int(q_ids.shape[1]),
                   "kv_bytes_uncompressed": state.kv_bytes_uncompressed,
                   "kv_ratio": (state.kv_bytes / state.kv_bytes_uncompressed
                                if state.kv_bytes_uncompressed else None),
                   "decode_s_per_token_median": median_or_none(steps[1:]),
                   "kv_bytes_end": end_bytes, "kv_tokens_end": end_tokens,
                   "chat_template": self.use_chat, "query_aware": req.query_aware,
                   **({"context_reused": state.reused} if req.context_key else {}),
                   **state.accounting, **extra_notes})

    def _context_state(self, req: GenerationRequest, ctx_ids: torch.Tensor) -> PrefillState:
        """The compressed context: a copy of the one held for an earlier question on it, or a
        fresh prefill (held for the next question when the request names its context)."""
        setting = (Setting(req.policy, req.budget),)
        held = self.recall_context(req.context_key, ctx_ids, setting)
        if held is not None:
            return held[setting[0]]
        state = self.prefill(ctx_ids, req.policy, req.budget)
        self.keep_context(req.context_key, ctx_ids, setting, {setting[0]: state})
        return state

    def _run(self, req: GenerationRequest, ctx_ids: torch.Tensor, q_ids: torch.Tensor,
             on_token: Callable[[int], None] | None = None):
        start = self.now()
        if req.query_aware:
            state = self.prefill(torch.cat([ctx_ids, q_ids], dim=1), req.policy, req.budget)
        else:
            state = self._context_state(req, ctx_ids)
            self.extend(state, q_ids)
        state.seconds = self.now() - start  # all prompt processing, compression included
        self.settle(state)
        tokens, finish, steps = self.decode(state, req.max_tokens, req.temperature, req.seed,
                                            on_token)
        state.seconds_to_first = state.seconds + (steps[0] if steps else 0.0)
        return state, tokens, finish, steps


@contextmanager
def request_failures(label: str) -> Iterator[None]:
    """A press that cannot handle this input, or out of memory: a failure of this request,
    recorded by the runner, not a crash of the run."""
    try:
        yield
    except (RuntimeError, AssertionError, ValueError, IndexError) as exc:
        raise EngineError(f"{label}: {exc.__class__.__name__}: {exc}", transient=False) from exc
