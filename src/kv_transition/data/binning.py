"""Quantile binning by token length, then seeded sampling per bin."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Bin:
    bin_idx: int
    token_min: int
    token_max: int
    pool: int  # candidates that fell in the bin
    members: list[str]  # sampled example ids


def quantile_bins(lengths: dict[str, int], n_bins: int) -> list[list[str]]:
    """Split example ids into ``n_bins`` equal-count groups ordered by length.

    Rank-based rather than value-based quantiles: ties and clustered lengths (the synthetic
    generator makes exact lengths) still give bins of equal size and never an empty bin.
    """
    ordered = sorted(lengths, key=lambda ex: (lengths[ex], ex))
    n_bins = max(1, min(n_bins, len(ordered)))
    cuts = [round(i * len(ordered) / n_bins) for i in range(n_bins + 1)]
    return [ordered[cuts[i]:cuts[i + 1]] for i in range(n_bins)]


def sample_bins(lengths: dict[str, int], n_bins: int, n_per_bin: int, seed: int) -> list[Bin]:
    bins = []
    for idx, group in enumerate(quantile_bins(lengths, n_bins)):
        rng = random.Random(f"{seed}-bin-{idx}")
        chosen = sorted(rng.sample(group, min(n_per_bin, len(group))))
        token_lens = [lengths[ex] for ex in group]
        bins.append(Bin(idx, min(token_lens), max(token_lens), len(group), chosen))
    return bins


def cluster_of(example) -> str:
    """The id of the example whose context ``example`` shares (its own id if none)."""
    return example.meta.get("cluster", example.example_id)


def with_questions(bins: list[Bin], examples: list) -> list[Bin]:
    """Each sampled context followed by the further questions asked of it, in their order."""
    more: dict[str, list[str]] = {}
    for ex in examples:
        if cluster_of(ex) != ex.example_id:
            more.setdefault(cluster_of(ex), []).append(ex.example_id)
    return [Bin(b.bin_idx, b.token_min, b.token_max, b.pool,
                [q for first in b.members for q in [first, *more.get(first, [])]]) for b in bins]
