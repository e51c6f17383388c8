"""Does compression keep the novel entries? Run the real press and compare.

For a policy and budget, the whole probed sequence (prompt + generated tokens) is prefilled
under the kvpress press the session builds (``ModelSession.prefill``), as if the cache were
compressed at the end of generation. Two things are recorded per captured layer:

- the policy's score of every position and KV head (the press's own ``score``, wrapped to
  keep a copy), and
- which positions the press really kept: each key left in the compressed cache is matched to
  the uncompressed key it came from (captured by a hook that runs before the press's hook in
  the same forward pass), so presses that do not keep the top scores are measured too.

The comparison with novelty is pure: ``retention`` (fraction of high-novelty positions kept vs
fraction of all positions kept) and ``rank_correlation`` (Spearman between novelty and score).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from kv_transition.engines.session import attention_mode
from kv_transition.probes.capture import KVCapture
from kv_transition.probes.store import MemorySink

MATCH_TOLERANCE = 1e-3  # relative; torch.cdist is a matmul and carries ~1e-6 noise


@dataclass
class PressOutcome:
    policy: str
    budget: float
    applied: dict
    kept: dict[int, np.ndarray]  # layer -> bool [kv_heads, positions]
    scores: dict[int, np.ndarray]  # layer -> float [kv_heads, positions]


def kept_mask(full_keys: torch.Tensor, kept_keys: torch.Tensor) -> np.ndarray:
    """Bool ``[heads, positions]``: which rows of ``full_keys`` [h, S, d] are in ``kept_keys``."""
    heads, n_pos = full_keys.shape[0], full_keys.shape[1]
    mask = np.zeros((heads, n_pos), dtype=bool)
    for h in range(heads):
        full, kept = full_keys[h].double(), kept_keys[h].double()
        dist = torch.cdist(kept, full)
        best = dist.min(dim=1)
        scale = full.norm(dim=1).max().clamp_min(1e-12)
        if torch.any(best.values > MATCH_TOLERANCE * scale):
            raise RuntimeError("a key in the compressed cache matches no uncompressed key; the "
                               "press changed keys instead of evicting them")
        mask[h, best.indices.numpy()] = True
    return mask


def n_kv_heads(config) -> int:
    """KV heads per layer (fewer than query heads under grouped-query attention)."""
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _recording_scores(press, scores: dict[int, np.ndarray]) -> None:
    """Shadow the press's ``score`` with one that keeps a copy per layer."""
    original = press.score

    def score(module, *args, **kwargs):
        result = original(module, *args, **kwargs)
        scores[module.layer_idx] = result[0].float().cpu().numpy()
        return result

    press.score = score


@torch.inference_mode()
def run_press(session, token_ids: list[int], policy: str, budget: float,
              layers: list[int]) -> PressOutcome:
    """Prefill ``token_ids`` under the policy's press; kept positions and scores per layer."""
    model = session.model
    n_kv = n_kv_heads(model.config)
    sink, scores = MemorySink(), {}

    def record(press) -> None:
        if press is None:
            raise ValueError(f"{policy}@{budget} compresses nothing; the probe needs budget < 1")
        _recording_scores(press, scores)

    capture = KVCapture(layers, list(range(n_kv)), "keys", sink, max_positions=len(token_ids))
    ids = torch.tensor([token_ids], device=session.device)
    with attention_mode(model, policy), capture.attach(model):
        state = session.prefill(ids, policy, budget, on_press=record)
    cache, applied = state.cache, state.applied
    kept = {}
    for layer in layers:
        full = torch.from_numpy(sink.get(layer, "keys")[1]).transpose(0, 1)  # [h, S, d]
        kept[layer] = kept_mask(full, cache.layers[layer].keys[0].float().cpu())
    return PressOutcome(policy, budget, applied, kept, {k: scores[k] for k in layers if k in scores})


# ---------------------------------------------------------------- novelty vs policy (pure)

@dataclass
class Retention:
    n_positions: int
    n_high: int
    kept_frac_all: float
    kept_frac_high: float


def high_novelty(novelty: np.ndarray, quantile: float = 0.9) -> np.ndarray:
    """Bool mask of finite positions strictly above the ``quantile`` of the finite values."""
    novelty = np.asarray(novelty, dtype=np.float64)
    finite = np.isfinite(novelty)
    if not finite.any():
        return np.zeros(len(novelty), dtype=bool)
    cut = np.quantile(novelty[finite], quantile)
    return finite & (novelty > cut)


def retention(novelty: np.ndarray, kept: np.ndarray, quantile: float = 0.9) -> Retention:
    """``kept`` is per position: 1/0, or the fraction of heads that kept it."""
    novelty = np.asarray(novelty, dtype=np.float64)
    kept = np.asarray(kept, dtype=np.float64)
    finite = np.isfinite(novelty)
    high = high_novelty(novelty, quantile)
    frac = lambda m: float(kept[m].mean()) if m.any() else float("nan")  # noqa: E731
    return Retention(int(finite.sum()), int(high.sum()), frac(finite), frac(high))


def rank_correlation(novelty: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """Spearman (rho, two-sided p) over positions where both are finite; NaN if undefined."""
    novelty, score = np.asarray(novelty, np.float64), np.asarray(score, np.float64)
    ok = np.isfinite(novelty) & np.isfinite(score)
    if ok.sum() < 3 or np.ptp(novelty[ok]) == 0 or np.ptp(score[ok]) == 0:
        return float("nan"), float("nan")
    rho, p = stats.spearmanr(novelty[ok], score[ok])
    return float(rho), float(p)
