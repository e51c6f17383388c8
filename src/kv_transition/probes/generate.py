"""Generate with the capture hooks attached, scoring every token under the model's logits.

Its own loop over the session's ``prefill`` and ``step`` rather than ``decode``: the probe
needs the K/V of every generated token, including the last one (``decode`` never feeds its last
token back), plus the log probability and entropy at each step, and never compresses. Prompts
are encoded with the session's tokenizer, as the experiment would encode them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kv_transition.engines.session import choose_token
from kv_transition.policy.spec import BASELINE_POLICY
from kv_transition.probes.metrics import logprob_and_entropy

_LOGIT_CHUNK = 256  # prompt rows scored at a time: bounds memory on large vocabularies


@dataclass
class ProbeGeneration:
    token_ids: list[int]  # every position: prompt then generated
    n_prompt: int
    logprob: np.ndarray  # per position; NaN at position 0 (nothing predicts it)
    entropy: np.ndarray  # entropy of the distribution that chose/predicted the position
    finish_reason: str
    cache: Any  # the DynamicCache after generation

    @property
    def n_generated(self) -> int:
        return len(self.token_ids) - self.n_prompt


def encode_prompt(engine, text: str) -> list[int]:
    """The prompt as the engine would send it: chat template when the model has one."""
    tok = engine.tokenizer
    if engine.use_chat:
        ids = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                      add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return list(ids)
    return list(tok(text).input_ids)


def _score_rows(logits: torch.Tensor, next_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    lps, ents = [], []
    for start in range(0, len(next_ids), _LOGIT_CHUNK):
        rows = logits[start:start + _LOGIT_CHUNK].float().cpu().numpy()
        lp, ent = logprob_and_entropy(rows, np.array(next_ids[start:start + _LOGIT_CHUNK]))
        lps.append(lp)
        ents.append(ent)
    empty = np.empty(0)
    return (np.concatenate(lps) if lps else empty, np.concatenate(ents) if ents else empty)


@torch.inference_mode()
def generate_with_capture(session, prompt_ids: list[int], capture, max_new_tokens: int,
                          temperature: float = 0.0, seed: int = 0) -> ProbeGeneration:
    """Prefill (full cache), then decode up to ``max_new_tokens``, feeding every token back once."""
    gen = torch.Generator(device=session.device).manual_seed(seed) if temperature > 0 else None
    ids = list(prompt_ids)
    with capture.attach(session.model):
        state = session.prefill(torch.tensor([ids], device=session.device), BASELINE_POLICY, 1.0,
                                all_logits=True)
        lp, ent = _score_rows(state.prompt_logits[:-1], ids[1:])
        logprobs, entropies = [np.nan, *lp.tolist()], [np.nan, *ent.tolist()]
        state.prompt_logits = None  # [prompt, vocab]: not kept past scoring
        logits = state.next_logits
        finish = "length"
        for _ in range(max_new_tokens):
            token = choose_token(logits, temperature, gen)
            lp, ent = _score_rows(logits[None], [token])
            logprobs.append(float(lp[0]))
            entropies.append(float(ent[0]))
            ids.append(token)
            logits = session.step(state, token)
            if token in session.eos_ids:
                finish = "stop"
                break
    return ProbeGeneration(ids, len(prompt_ids), np.array(logprobs), np.array(entropies),
                           finish, state.cache)
