"""Retry transient engine failures with exponential backoff and full jitter.

A sweep sends thousands of requests to one server; when it hiccups (restart, overload, 429) we
want the request to succeed late rather than be recorded as a compression failure. Full jitter
(a uniform delay in [0, cap]) keeps many workers from retrying in lockstep. Errors that are not
transient (a 400, a bad model name, a stream that broke after the answer began) propagate at
once: the engine decides what is transient, this module only decides when to try again.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Awaitable, Callable, TypeVar

from kv_transition.engines.base import EngineError

T = TypeVar("T")

MAX_BACKOFF_S = 30.0
# A server may ask for any Retry-After; beyond this we would stall a sweep for nothing.
MAX_RETRY_AFTER_S = 600.0


def backoff_delay(attempt: int, backoff_s: float, rng: random.Random,
                  retry_after: float | None = None) -> float:
    """Delay before retry number ``attempt + 1`` (attempt counts from 0)."""
    cap = min(MAX_BACKOFF_S, backoff_s * 2 ** attempt)
    delay = rng.uniform(0.0, cap)
    if retry_after is not None and retry_after > 0:
        # The server knows when it will have capacity again: never come back sooner.
        delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER_S))
    return delay


def call_with_retries(
    fn: Callable[[], T],
    *,
    max_retries: int,
    backoff_s: float,
    sleep: Callable[[float], Any] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, EngineError, float], Any] | None = None,
) -> tuple[T, int]:
    """Call ``fn()``; retry transient ``EngineError`` up to ``max_retries`` times.

    Returns ``(result, attempts)`` where attempts counts calls made (1 = no retry). The final
    error propagates with an ``attempts`` attribute so the runner can record how hard it tried.
    ``on_retry(attempt, error, delay)`` is called before each sleep (for logging).
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return fn(), attempt + 1
        except EngineError as err:
            err.attempts = attempt + 1
            if not err.transient or attempt >= max_retries:
                raise
            delay = backoff_delay(attempt, backoff_s, rng, getattr(err, "retry_after", None))
            if on_retry is not None:
                on_retry(attempt + 1, err, delay)
            sleep(delay)
            attempt += 1


async def acall_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    backoff_s: float,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> tuple[T, int]:
    """``call_with_retries`` for coroutines: the wait yields to the other requests in flight."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return await fn(), attempt + 1
        except EngineError as err:
            err.attempts = attempt + 1
            if not err.transient or attempt >= max_retries:
                raise
            await sleep(backoff_delay(attempt, backoff_s, rng, getattr(err, "retry_after", None)))
            attempt += 1
