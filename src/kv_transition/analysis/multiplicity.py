"""Multiplicity control across every bin, signal and setting an experiment tests.

Benjamini-Hochberg (scipy's ``false_discovery_control``) is the default: when no signal truly
rises (flat curves, declines, collapses) every hypothesis is null and the false discovery rate
equals the family-wise error, so false zones stay at alpha; when a zone is real it keeps more
power than Holm. Holm (step-down Bonferroni) controls the family-wise error under any
configuration and is one config switch away.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import false_discovery_control

METHODS = ("bh", "holm")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values: the k-th smallest times (m - k + 1), made monotone."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    m = p.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(1.0, adjusted)
    return out.tolist()


def adjust(pvalues: Sequence[float], method: str) -> list[float]:
    if len(pvalues) == 0:
        return []
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return false_discovery_control(np.asarray(pvalues, dtype=float), method="bh").tolist()
    raise ValueError(f"unknown multiplicity method {method!r}; allowed: {', '.join(METHODS)}")
