"""What to ask about one generated example: every question its needles can answer.

Dense supervision is what makes a small model learn retrieval at all (a first probe stayed at
chance with one question per sequence, ../shared/notes/reference-model-probe.md): so each
training context is followed by one question per key it hides, not only the generator's own.
The wording of the extra questions is the generator's (``tests/reference`` pins it), so the
first question of a training sequence is distributed exactly like an evaluation prompt.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from kv_transition.data.normalize import Example
from kv_transition.data.synthetic import single_key_question
from kv_transition.reference import formats

# The generator's key/value needles, in the order they appear in the context.
_FACT = re.compile(r"(?:The special magic number|One of the special magic numbers) "
                   r"for (\w+) is: (\d+)\.")


@dataclass
class Ask:
    """One question after the context and the answer the model must write after it."""

    question: str
    answer_prefix: str
    target: str  # the text generated after the prompt; EOS follows it
    fmt: str


def facts(context: str) -> list[tuple[str, str]]:
    """(key, value) of every key/value needle, in context order."""
    return _FACT.findall(context)


def asked_key(example: Example) -> str:
    """The key a retrieval example asks about (the one holding its first gold value)."""
    return next(k for k, v in facts(example.context) if v == example.answers[0])


def retrieval_ask(key: str, values: list[str], fmt: str, text_q: tuple[str, str]) -> Ask:
    """Ask for ``key``'s value(s) in ``fmt``; ``text_q`` is the text format's wording."""
    if fmt == formats.TEXT:
        return Ask(*text_q, formats.text_answer(values), fmt)
    answer = formats.functional_answer(fmt, key, values, several=len(values) > 1)
    return Ask(formats.functional_question(text_q[0], fmt), "", " " + answer, fmt)


def functional_ask(example: Example, fmt: str) -> Ask:
    """The example's own question in a functional format (what evaluation asks)."""
    key = asked_key(example)
    values = [v for k, v in facts(example.context) if k == key]
    if example.meta["task"] != "niah_multivalue":
        values = values[:1]
    return retrieval_ask(key, values, fmt, (example.question, example.answer_prefix))


def asks_for(example: Example, rng: random.Random, format_weights: dict[str, float]) -> list[Ask]:
    """Every question the example's needles answer, formats drawn by weight, in random order."""
    family = example.meta["task"]
    fmts, weights = list(format_weights), list(format_weights.values())
    pick = lambda: rng.choices(fmts, weights)[0]  # noqa: E731
    own = (example.question, example.answer_prefix)
    if family == "variable_tracking":  # one chain: the names in chain order
        return [Ask(*own, formats.text_answer(example.answers), formats.TEXT)]
    if family == "niah_multivalue":
        values = [v for _, v in facts(example.context)]
        return [retrieval_ask(asked_key(example), values, pick(), own)]
    asks = [retrieval_ask(k, [v], pick(), single_key_question(k))
            for k, v in facts(example.context)]
    if family == "niah_multiquery":  # the asked order is the generator's, so answer in it
        asks.append(Ask(*own, formats.text_answer(example.answers), formats.TEXT))
    rng.shuffle(asks)
    return asks
