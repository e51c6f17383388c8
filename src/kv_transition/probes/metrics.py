"""Novelty of each position of a vector series, and the model's own surprise: pure functions.

Geometric metrics take ``x`` of shape ``[T, D]`` (one vector per position: a head's key, a
layer's concatenated keys, ...) and return a length-``T`` float array. Position ``t`` is
compared with its trailing window ``x[t-w:t]`` (the ``w`` positions before it, not itself);
positions with fewer than ``w`` predecessors have no full window and are NaN.

Definitions (``m_t`` is the window mean):

- cosine novelty ``1 - cos(x_t, m_t)``; NaN when either vector is zero.
- L2 novelty ``||x_t - m_t||_2``.
- projection residual ``||x_t - P_t x_t|| / ||x_t||`` where ``P_t`` projects onto the span
  of the window's top right-singular vectors holding a fraction ``energy`` of its (uncentred)
  energy ``sum(s_i^2)``. The energy cut keeps the subspace smaller than the whole space even
  when ``w >= D``, where the plain span would make every residual 0.
- Mahalanobis ``sqrt((x_t - m_t)^T S^-1 (x_t - m_t))`` with ``S`` the window covariance
  (population, ``ddof=0``) shrunk towards a scaled identity: ``(1-a) C + a (tr C / D) I``;
  above ``diag_above`` dimensions a window cannot estimate a full covariance, so only the
  diagonal is used: ``(1-a) var_i + a mean(var)``. ``eps`` keeps ``S`` invertible.

Predictive metrics come from the model's logits at the step that chose the token: log
probability of the token (surprise is its negative) and entropy (nats), both under the model's
own distribution (temperature 1) whatever the sampling temperature; entropy gradient is
``H_t - H_{t-1}``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EPS = 1e-6


def trailing_windows(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(history ``[T-w, w, D]``, current ``[T-w, D]``) for positions ``w..T-1``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a [positions, dim] array, got shape {x.shape}")
    if window < 1:
        raise ValueError("window must be >= 1")
    if x.shape[0] <= window:
        return np.empty((0, window, x.shape[1])), np.empty((0, x.shape[1]))
    hist = sliding_window_view(x, (window, x.shape[1]))[:-1, 0]
    return hist, x[window:]


def _padded(values: np.ndarray, n: int) -> np.ndarray:
    """Put the values of positions ``w..T-1`` at the end of a NaN array of length ``n``."""
    out = np.full(n, np.nan)
    if len(values):
        out[n - len(values):] = values
    return out


def cosine_novelty(x: np.ndarray, window: int = 16) -> np.ndarray:
    hist, cur = trailing_windows(x, window)
    mean = hist.mean(axis=1)
    denom = np.linalg.norm(cur, axis=1) * np.linalg.norm(mean, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("nd,nd->n", cur, mean) / denom
    cos = np.where(denom > 0, np.clip(cos, -1.0, 1.0), np.nan)
    return _padded(1.0 - cos, len(x))


def l2_novelty(x: np.ndarray, window: int = 16) -> np.ndarray:
    hist, cur = trailing_windows(x, window)
    return _padded(np.linalg.norm(cur - hist.mean(axis=1), axis=1), len(x))


def projection_residual(x: np.ndarray, window: int = 16, energy: float = 0.9) -> np.ndarray:
    hist, cur = trailing_windows(x, window)
    if not len(cur):
        return np.full(len(x), np.nan)
    _, s, vt = np.linalg.svd(hist, full_matrices=False)  # s [N, r], vt [N, r, D]
    power = s ** 2
    total = power.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        before = (np.cumsum(power, axis=1) - power) / total
    # direction i is kept while the energy of the directions before it is still short of the cut
    keep = (before < energy - 1e-12) & (total > 0)
    coeffs = np.einsum("nrd,nd->nr", vt, cur) * keep
    norm2 = np.einsum("nd,nd->n", cur, cur)
    resid2 = np.clip(norm2 - (coeffs ** 2).sum(axis=1), 0.0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norm2 > 0, np.sqrt(resid2 / norm2), np.nan)
    return _padded(out, len(x))


def mahalanobis_novelty(x: np.ndarray, window: int = 32, diag_above: int = 32,
                        shrinkage: float = 0.1, eps: float = EPS) -> np.ndarray:
    hist, cur = trailing_windows(x, window)
    if not len(cur):
        return np.full(len(x), np.nan)
    mean = hist.mean(axis=1)
    diff = cur - mean
    centred = hist - mean[:, None, :]
    dim = x.shape[1]
    if dim > diag_above:
        var = (centred ** 2).mean(axis=1)
        reg = (1 - shrinkage) * var + shrinkage * var.mean(axis=1, keepdims=True) + eps
        return _padded(np.sqrt((diff ** 2 / reg).sum(axis=1)), len(x))
    cov = np.einsum("nwi,nwj->nij", centred, centred) / window
    scale = np.trace(cov, axis1=1, axis2=2) / dim
    eye = np.eye(dim)[None]
    reg = (1 - shrinkage) * cov + (shrinkage * scale[:, None, None] + eps) * eye
    solved = np.linalg.solve(reg, diff[..., None])[..., 0]
    return _padded(np.sqrt(np.clip(np.einsum("nd,nd->n", diff, solved), 0.0, None)), len(x))


def geometric_metrics(x: np.ndarray, window: int = 16, mahalanobis_window: int = 32,
                      diag_above: int = 32, shrinkage: float = 0.1,
                      energy: float = 0.9) -> dict[str, np.ndarray]:
    """Every geometric metric of one series, keyed by the names used in the database."""
    return {
        "cosine": cosine_novelty(x, window),
        "l2": l2_novelty(x, window),
        "projection": projection_residual(x, window, energy),
        "mahalanobis": mahalanobis_novelty(x, mahalanobis_window, diag_above, shrinkage),
    }


# ---------------------------------------------------------------- predictive

def logprob_and_entropy(logits: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log probability of ``tokens[i]`` and entropy (nats) of ``softmax(logits[i])``."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    logp = shifted - logz
    chosen = np.take_along_axis(logp, np.asarray(tokens)[:, None], axis=-1)[:, 0]
    entropy = -(np.exp(logp) * logp).sum(axis=-1)
    return chosen, entropy


def surprise(logprob: np.ndarray) -> np.ndarray:
    return -np.asarray(logprob, dtype=np.float64)


def entropy_gradient(entropy: np.ndarray) -> np.ndarray:
    entropy = np.asarray(entropy, dtype=np.float64)
    return np.concatenate([[np.nan], np.diff(entropy)]) if len(entropy) else entropy


def predictive_metrics(logprob: np.ndarray, entropy: np.ndarray) -> dict[str, np.ndarray]:
    return {"surprise": surprise(logprob), "entropy": np.asarray(entropy, dtype=np.float64),
            "entropy_gradient": entropy_gradient(entropy)}
