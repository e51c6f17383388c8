"""Repeated spans in training contexts: the induction signal retrieval is built from.

A small model on the retrieval tasks alone sits at chance on the answer digits for thousands
of steps (the CPU probes in MODEL_CARD.md): answering needs a two-step circuit (gather the key
near the value, then match it from the question), and no gradient reaches the second step
until the first exists. Copying a span seen earlier in the same context is the simplest task
that needs the same kind of attention (find where this text occurred before, read what came
next), and small transformers learn it fast. So a training context gets a few spans of itself
copied later into it, with loss on the predictable part of each copy:

- a filler span: the first two tokens of the copy cannot be predicted, the rest can;
- a needle (``number for KEY is: 4985193.``): the key cannot be predicted, everything after
  it can, digits included. Needles are never copied in multi-value contexts, where a second
  value for the same key would be a new answer, not a repeat.

Evaluation contexts have no copies; the copies only teach the attention pattern. Once
retrieval has formed they cost more than they teach: the recipe's last run trains without them
(``--repeat-spans 0``), which mended multi-value answers whose last needle sits at the end of
the context (MODEL_CARD.md, recipe N).
"""

from __future__ import annotations

import random

FILLER_SPAN = (12, 24)       # tokens per copied filler span
NEEDLE_LEAD = 9              # "the special magic number for KEY is : ▁" before the digits
NEEDLE_UNSUPERVISED = 6      # "the special magic number for KEY": the copied key is free
_REGION_LEAD = 12            # the longest needle lead ("one of the ... numbers for KEY is : ▁")
_TRIES = 8


def digit_runs(ids: list[int], start: int, end: int, digits: set[int]) -> list[tuple[int, int]]:
    """(first, last + 1) of each run of digit tokens in ``ids[start:end]``."""
    runs, i = [], start
    while i < end:
        if ids[i] in digits:
            j = i
            while j < end and ids[j] in digits:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


class _Context:
    """The text region of one training sequence: where needles are, where sentences end."""

    def __init__(self, ids: list[int], start: int, end: int, digits: set[int], stop: int):
        self.ids, self.start, self.end, self.digits, self.stop = ids, start, end, digits, stop
        self.runs = digit_runs(ids, start, end, digits)
        self.regions = [(a - _REGION_LEAD, b + 1) for a, b in self.runs]

    def clear(self, a: int, b: int) -> bool:
        """No needle overlaps ``ids[a:b]``."""
        return all(b <= ra or a >= rb for ra, rb in self.regions)

    def boundaries(self, after: int) -> list[int]:
        """Positions right after a sentence's "." from ``after`` on, never inside a needle."""
        return [p for p in range(after, self.end + 1) if self.ids[p - 1] == self.stop and
                all(not ra < p < rb for ra, rb in self.regions)]


def _filler_span(ctx: _Context, rng: random.Random) -> tuple[int, int, int] | None:
    width = rng.randint(*FILLER_SPAN)
    for _ in range(_TRIES):
        if ctx.end - ctx.start <= width:
            return None
        a = rng.randint(ctx.start, ctx.end - width)
        if ctx.clear(a, a + width):
            return a, a + width, 2
    return None


def _needle_span(ctx: _Context, rng: random.Random) -> tuple[int, int, int] | None:
    runs = [(a, b) for a, b in ctx.runs if a - NEEDLE_LEAD >= ctx.start and b < ctx.end]
    if not runs:
        return None
    a, b = rng.choice(runs)
    return a - NEEDLE_LEAD, b + 1, NEEDLE_UNSUPERVISED  # + 1: the closing "."


def add_repeats(ids: list[int], mask: list[bool], start: int, end: int, rng: random.Random,
                spans: int, digits: set[int], stop: int, needles: bool) -> int:
    """Copy ``spans`` spans of ``ids[start:end]`` to later sentence ends there, in place.

    ``stop`` is the id of "."; copies go only right after one, so no needle is ever split.
    Half the copies are needles where ``needles`` allows. Returns the region's new end.
    """
    for _ in range(spans):
        ctx = _Context(ids, start, end, digits, stop)
        pick = _needle_span if needles and rng.random() < 0.5 else _filler_span
        span = pick(ctx, rng)
        places = ctx.boundaries(span[1]) if span else []
        if not places:
            continue
        a, b, free = span
        at = rng.choice(places)  # after the original, so the copy can be predicted from it
        copy = ids[a:b]
        ids[at:at] = copy
        mask[at:at] = [False] * free + [True] * (len(copy) - free)
        end += len(copy)
    return end
