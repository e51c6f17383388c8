"""Failure classes for one response, checked in a fixed order (the first rule that fires wins).

The order puts what the engine reports (timeout, error) before what the text shows, because a
failed request says nothing about the model. TRUNCATED counts as a failure although the text
may still hold the answer: generation hit ``max_tokens`` without stopping, so the model never
ended its answer on its own. The scorer still scores such a response. Because TRUNCATED comes
first, a degenerate loop that runs into ``max_tokens`` is reported as TRUNCATED; FORMAT_ERROR
catches the loops and noise that stop by themselves.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

FAILURE_TYPES = ("EMPTY_OUTPUT", "TRUNCATED", "FORMAT_ERROR", "REFUSAL", "TIMEOUT", "ENGINE_ERROR")

REFUSAL_OPENINGS = ("i cannot", "i can't", "i can not", "i'm sorry", "i am sorry", "as an ai",
                    "unable to", "i'm unable to", "i am unable to")
REPEAT_LIMIT = 8  # the same token this many times in a row: a classic broken-cache loop

_TOKEN = re.compile(r"\w+|[^\w\s]")


def _is_refusal(text: str) -> bool:
    opening = text.lstrip().lower().replace("\u2019", "'")  # curly apostrophes from chat models
    return opening.startswith(REFUSAL_OPENINGS)


def _is_noise(text: str) -> bool:
    """Only whitespace, punctuation, symbols or control characters: no word, no digit."""
    return all(unicodedata.category(ch)[0] in "ZPSC" for ch in text)


def _longest_repeat(text: str) -> int:
    run, best, last = 0, 0, None
    for token in _TOKEN.findall(text.lower()):
        run = run + 1 if token == last else 1
        best, last = max(best, run), token
    return best


# (type, fires?, message) in precedence order; arguments are (text, finish_reason, error).
_RULES: list[tuple[str, Callable[[str, str, str | None], bool], Callable[..., str]]] = [
    ("TIMEOUT", lambda t, f, e: f == "timeout",
     lambda t, f, e: "the request timed out" + (f": {e}" if e else "")),
    ("ENGINE_ERROR", lambda t, f, e: f == "error",
     lambda t, f, e: e or "the engine reported an error without a message"),
    ("EMPTY_OUTPUT", lambda t, f, e: not t.strip(),
     lambda t, f, e: "the model returned no text"),
    ("TRUNCATED", lambda t, f, e: f == "length",
     lambda t, f, e: "generation hit max_tokens without stopping; the answer may still be "
     "scored"),
    ("REFUSAL", lambda t, f, e: _is_refusal(t),
     lambda t, f, e: f"the model declined: {t.strip()[:60]!r}"),
    ("FORMAT_ERROR", lambda t, f, e: _is_noise(t),
     lambda t, f, e: "the output has no word or digit, only punctuation or symbols"),
    ("FORMAT_ERROR", lambda t, f, e: _longest_repeat(t) >= REPEAT_LIMIT,
     lambda t, f, e: f"degenerate repetition: one token {_longest_repeat(t)} times in a row"),
]


def classify_failure(text: str, finish_reason: str,
                     error: str | None = None) -> tuple[str, str] | None:
    """(failure_type, message) for the first rule that fires, or None for a normal answer."""
    text, finish_reason = text or "", (finish_reason or "").lower()
    for failure_type, fires, message in _RULES:
        if fires(text, finish_reason, error):
            return failure_type, message(text, finish_reason, error)
    return None
