"""Retry policy: which errors are retried, how long we wait, what the caller gets back."""

from __future__ import annotations

import random

import pytest

from kv_transition.engines.base import EngineError
from kv_transition.engines.retries import MAX_BACKOFF_S, MAX_RETRY_AFTER_S, call_with_retries


class Flaky:
    """Raises the given errors in order, then returns "ok"; counts calls."""

    def __init__(self, *errors: EngineError):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def transient(retry_after: float | None = None) -> EngineError:
    err = EngineError("HTTP 503", transient=True)
    if retry_after is not None:
        err.retry_after = retry_after
    return err


def run(fn, *, max_retries=3, backoff_s=1.0, seed=0, on_retry=None):
    delays: list[float] = []
    result = call_with_retries(fn, max_retries=max_retries, backoff_s=backoff_s,
                               sleep=delays.append, rng=random.Random(seed), on_retry=on_retry)
    return result, delays


def test_success_first_try_does_not_sleep():
    (result, attempts), delays = run(Flaky())
    assert (result, attempts, delays) == ("ok", 1, [])


def test_transient_errors_are_retried_until_success():
    fn = Flaky(transient(), transient())
    (result, attempts), delays = run(fn)
    assert (result, attempts, fn.calls, len(delays)) == ("ok", 3, 3, 2)


def test_non_transient_error_propagates_without_retry():
    fn = Flaky(EngineError("HTTP 400: bad model", transient=False))
    with pytest.raises(EngineError, match="bad model") as info:
        run(fn)
    assert fn.calls == 1
    assert info.value.attempts == 1


def test_last_error_propagates_after_max_retries():
    fn = Flaky(*(transient() for _ in range(10)))
    delays: list[float] = []
    with pytest.raises(EngineError) as info:
        call_with_retries(fn, max_retries=2, backoff_s=0.1, sleep=delays.append)
    assert fn.calls == 3 and len(delays) == 2
    assert info.value.attempts == 3


def test_zero_retries_means_one_call():
    fn = Flaky(transient())
    with pytest.raises(EngineError):
        run(fn, max_retries=0)
    assert fn.calls == 1


def test_delays_are_full_jitter_within_a_growing_cap():
    # Over many seeds, delay k lies in [0, backoff * 2**k] and the caps are actually used.
    worst = [0.0] * 4
    for seed in range(200):
        _, delays = run(Flaky(*(transient() for _ in range(4))), max_retries=4,
                        backoff_s=0.5, seed=seed)
        for k, d in enumerate(delays):
            assert 0.0 <= d <= 0.5 * 2 ** k
            worst[k] = max(worst[k], d)
    assert worst == sorted(worst)  # the cap grows with the attempt
    assert worst[3] > 0.5 * 2 ** 2  # and jitter reaches beyond the previous cap


def test_delays_are_capped():
    _, delays = run(Flaky(*(transient() for _ in range(12))), max_retries=12, backoff_s=10.0)
    assert max(delays) <= MAX_BACKOFF_S


def test_retry_after_is_a_floor():
    _, delays = run(Flaky(transient(retry_after=7.0), transient(retry_after=0.0)), backoff_s=0.01)
    assert delays[0] >= 7.0
    assert delays[1] <= 0.02  # a zero Retry-After does not add a wait


def test_absurd_retry_after_is_bounded():
    _, delays = run(Flaky(transient(retry_after=86400.0)))
    assert delays == [MAX_RETRY_AFTER_S]


def test_on_retry_sees_each_retry_before_sleeping():
    seen = []
    fn = Flaky(transient(), transient())
    _, delays = run(fn, on_retry=lambda n, err, d: seen.append((n, err.transient, d)))
    assert seen == [(1, True, delays[0]), (2, True, delays[1])]


def test_other_exceptions_are_not_caught():
    def boom():
        raise ValueError("bug")

    with pytest.raises(ValueError):
        run(boom)
