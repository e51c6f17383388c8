"""Needle-only rows that teach the first hop of retrieval: binding a value to its key.

The CPU probes (MODEL_CARD.md, "Binding stages") found that the reference shape binds a value
to its key only when the circuit is built in two steps:

1. ``compact``: ``KEY 4985193.`` pairs with no ``▁`` token before the number, so the value
   follows its key directly, then ``? KEY`` questions. This is plain induction (a
   previous-token head and a matching head). Each needle appears ``repeats`` times in shuffled
   order, and the values of its repeats carry loss as well as the answers: with one
   occurrence per needle, 2-8 needles taught nothing in 1,000 steps.
2. ``ruler``: the same rows in the generator's wording (``The special magic number for KEY
   is: 4985193.``, the project's question template). Here the key sits 4 tokens before its value
   and 7 before the answer. From scratch this stayed at copying some value (1/needles) for
   1,900 steps; from the compact stage's weights it bound within 800.

Only the values of repeats and the answers (with their EOS) carry loss. Every first
occurrence of a value is unpredictable, and language-modelling the rest only adds noise.
"""

from __future__ import annotations

import random

from kv_transition.data import prompt as prompt_tpl
from kv_transition.data import vocab
from kv_transition.data.synthetic import needle, single_key_question
from kv_transition.reference.model import special_ids

COMPACT, RULER = "compact", "ruler"
WORDINGS = (COMPACT, RULER)
VALUE_RANGE = (10 ** 6, 10 ** 7)  # 7-digit values, as the generator's needles


def binding_row(tok, rng: random.Random, needles: int, repeats: int,
                wording: str) -> tuple[list[int], list[bool]]:
    """(token ids without BOS, loss mask) of one row: the needles, then every key asked."""
    space = tok.token_to_id("\u2581")
    compact = wording == COMPACT

    def ids_of(text: str) -> list[int]:
        ids = tok.encode(text, add_special_tokens=False).ids
        return [i for i in ids if i != space] if compact else ids

    keys = rng.sample(vocab.KEYS, needles)
    values = [str(rng.randrange(*VALUE_RANGE)) for _ in keys]
    order = [i for i in range(needles) for _ in range(repeats)]
    rng.shuffle(order)
    ids, mask, seen = [], [], set()
    for i in order:
        text = needle(keys[i], values[i])  # "The special magic number for KEY is: VALUE."
        lead = ids_of(keys[i] if compact else text[:text.index(":") + 1])
        value = ids_of(f" {values[i]}. ")
        ids += lead + value
        mask += [False] * len(lead) + [i in seen] * len(value)  # a repeat's value: bound
        seen.add(i)
    for i in rng.sample(range(needles), needles):
        question = ids_of(f" ? {keys[i]}" if compact else
                          "\n\n" + prompt_tpl.question_part(*single_key_question(keys[i])))
        answer = ids_of(f" {values[i]}.") + [special_ids(tok)["eos"]]
        ids += question + answer
        mask += [False] * len(question) + [True] * len(answer)
    return ids, mask
