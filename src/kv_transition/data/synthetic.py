"""A deterministic, offline RULER-style task generator (Hsieh et al., 2024), in plain English.

Each example hides needles (key/value facts or a chain of variable assignments) at chosen
depths of a filler haystack, and the haystack is sized so the whole context has
``target_tokens`` tokens *of the model's own tokenizer*: length bins then mean the same thing
to the model as to the analysis. Only words from ``vocab.vocabulary()`` and digits are emitted.

Task families follow RULER's defaults: 4 needles for multi-key / multi-value / multi-query
(one asked, one key with 4 values, 4 keys asked), variable tracking with one chain of 4 hops.
All are scored with RULER's string_match_all ("ruler_all").
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Callable

from kv_transition.data import vocab
from kv_transition.data.normalize import Example
from kv_transition.errors import BadInput
from kv_transition.settings import SYNTHETIC_TASKS

N_NEEDLES = 4          # RULER's num_needle_k / num_needle_v / num_needle_q
VT_HOPS = 4            # RULER's variable_tracking num_hops (num_chains = 1)
NIAH_DIGITS = 7        # RULER's 7-digit magic numbers
VT_DIGITS = 5          # RULER's 5-digit variable values
_MAX_PROBES = 64       # hard stop for count_tokens calls per example

# Filler sentence forms; letters are word-class slots (see _SLOTS), anything else is literal.
_FORMS = [
    "D A N T the N P the N .",
    "D N I V .",
    "D N P the N was A .",
    "D A N I , and the N T the A N .",
    "D N said that the N was A .",
    "D N T the N , but the N I V .",
    "When the N I , the A N T the N .",
]
_SLOTS = {"D": vocab.DETERMINERS, "A": vocab.ADJECTIVES, "N": vocab.NOUNS,
          "T": vocab.TRANSITIVE_VERBS, "I": vocab.INTRANSITIVE_VERBS, "V": vocab.ADVERBS,
          "P": vocab.PREPOSITIONS}


@dataclass
class _Plan:
    """What one example hides and asks; needles are (depth, sentence) in insertion order."""

    needles: list[tuple[float, str]]
    question: str
    answers: list[str]
    answer_prefix: str
    depth_meta: dict = field(default_factory=dict)
    # further single-key questions the same context answers: (key, value, needle depth)
    others: list[tuple[str, str, float]] = field(default_factory=list)


def numbers(rng: random.Random, k: int, digits: int) -> list[str]:
    """k distinct numbers with exactly ``digits`` digits (no leading zero)."""
    return [str(v) for v in rng.sample(range(10 ** (digits - 1), 10 ** digits), k)]


def _spread(depth: float, m: int) -> list[float]:
    """m depths evenly spaced around the unit circle from ``depth``: needles cover the context."""
    return [round((depth + k / m) % 1.0, 6) for k in range(m)]


def needle(key: str, value: str) -> str:
    return f"The special magic number for {key} is: {value}."


def single_key_question(key: str) -> tuple[str, str]:
    """(question, answer prefix) asking one key's value, in niah_single's wording."""
    return (f"What is the special magic number for {key} mentioned in the provided text?",
            f"The special magic number for {key} mentioned in the provided text is")


def _plan_single(rng: random.Random, depth: float) -> _Plan:
    key, value = rng.choice(vocab.KEYS), numbers(rng, 1, NIAH_DIGITS)[0]
    return _Plan([(depth, needle(key, value))], single_key_question(key)[0], [value],
                 single_key_question(key)[1], {"depth": depth})


def _plan_multikey(rng: random.Random, depth: float) -> _Plan:
    # The asked needle sits at the example's depth; the other keys are distractors.
    keys, values = rng.sample(vocab.KEYS, N_NEEDLES), numbers(rng, N_NEEDLES, NIAH_DIGITS)
    depths = _spread(depth, N_NEEDLES)
    return _Plan(
        [(d, needle(k, v)) for d, k, v in zip(depths, keys, values)],
        single_key_question(keys[0])[0], [values[0]], single_key_question(keys[0])[1],
        {"depth": depth, "depths": depths}, list(zip(keys, values, depths))[1:])


def _plan_multivalue(rng: random.Random, depth: float) -> _Plan:
    # "One of the ..." (RULER's wording): several values share the key, so "The" would lie.
    key, values = rng.choice(vocab.KEYS), numbers(rng, N_NEEDLES, NIAH_DIGITS)
    depths = _spread(depth, N_NEEDLES)
    return _Plan(
        [(d, f"One of the special magic numbers for {key} is: {v}.")
         for d, v in zip(depths, values)],
        f"What are all the special magic numbers for {key} mentioned in the provided text?",
        values, f"The special magic numbers for {key} mentioned in the provided text are",
        {"depths": depths})


def _plan_multiquery(rng: random.Random, depth: float) -> _Plan:
    keys, values = rng.sample(vocab.KEYS, N_NEEDLES), numbers(rng, N_NEEDLES, NIAH_DIGITS)
    depths = _spread(depth, N_NEEDLES)
    asked = ", ".join(keys[:-1]) + f" and {keys[-1]}"
    return _Plan(
        [(d, needle(k, v)) for d, k, v in zip(depths, keys, values)],
        f"What are all the special magic numbers for {asked} mentioned in the provided text?",
        values, f"The special magic numbers for {asked} mentioned in the provided text are",
        {"depths": depths}, list(zip(keys, values, depths)))


def _plan_variable_tracking(rng: random.Random, depth: float) -> _Plan:
    names, value = rng.sample(vocab.VARIABLE_NAMES, VT_HOPS + 1), numbers(rng, 1, VT_DIGITS)[0]
    chain = [f"VAR {names[0]} = {value}."]
    chain += [f"VAR {new} = VAR {old}." for old, new in zip(names, names[1:])]
    depths = sorted(_spread(depth, len(chain)))  # sorted: each hop follows the one it reads
    return _Plan(
        list(zip(depths, chain)),
        f"Find all variables that are assigned the value {value} in the text above.",
        names, f"According to the chain of variable assignment in the text above, "
        f"{len(names)} variables are assigned the value {value}, they are:",
        {"depths": depths})


_PLANNERS: dict[str, Callable[[random.Random, float], _Plan]] = {
    "niah_single": _plan_single,
    "niah_multikey": _plan_multikey,
    "niah_multivalue": _plan_multivalue,
    "niah_multiquery": _plan_multiquery,
    "variable_tracking": _plan_variable_tracking,
}


class _Haystack:
    """An endless, seeded stream of filler sentences, cut to an exact number of words."""

    def __init__(self, rng: random.Random):
        self._rng = rng
        self._sentences: list[list[str]] = []  # words, punctuation glued to the word before
        self._ends: list[int] = []             # cumulative word count after each sentence

    def _grow(self) -> None:
        words = [self._rng.choice(_SLOTS[s]) if s in _SLOTS else s
                 for s in self._rng.choice(_FORMS).split()]
        glued = " ".join(words).replace(" ,", ",").replace(" .", ".").split()
        self._sentences.append(glued)
        self._ends.append((self._ends[-1] if self._ends else 0) + len(glued))

    def sentences(self, n_words: int) -> list[str]:
        """Whole sentences holding ``n_words`` words; the last is cut short and closed by '.'."""
        while not self._ends or self._ends[-1] < n_words:
            self._grow()
        full = bisect.bisect_right(self._ends, n_words)
        out = [" ".join(s) for s in self._sentences[:full]]
        rest = n_words - (self._ends[full - 1] if full else 0)
        if rest:
            out.append(" ".join(self._sentences[full][:rest]).rstrip(",.") + ".")
        return out


def _insert(sentences: list[str], needles: list[tuple[float, str]]) -> str:
    """Put each needle before the sentence at round(depth * n); ties keep the plan's order."""
    slots = [round(d * len(sentences)) for d, _ in needles]
    out: list[str] = []
    for pos in range(len(sentences) + 1):
        out += [text for slot, (_, text) in zip(slots, needles) if slot == pos]
        if pos < len(sentences):
            out.append(sentences[pos])
    return " ".join(out)


def _fit(render: Callable[[int], str], count_tokens: Callable[[str], int], target: int,
         tol: int, base: int) -> tuple[str, int]:
    """Pick the haystack size (in words) whose context is within ``tol`` tokens of ``target``.

    Token counts grow almost linearly with words, so interpolation usually lands in 2-4
    count_tokens calls; falling back to bisection when the bracket shrinks slowly keeps the
    worst case O(log n). ``base`` is the token count of the needles alone (0 words).
    Returns the closest context found and its distance from ``target``.
    """
    best = (abs(base - target), render(0))
    lo, c_lo, hi, c_hi = 0, base, None, 0
    width, rate, undershoots = None, 1.0, 0
    for _ in range(_MAX_PROBES):
        if best[0] <= tol:
            break
        if hi is None:  # no overshoot yet: extrapolate, doubling if the rate keeps misleading
            w = lo + max(1, math.ceil((target - c_lo) / rate))
            w = min(max(w, 2 * lo) if undershoots >= 2 else w, 16 * target + 64)
            if w <= lo:
                break
        else:
            if hi - lo <= 1:
                break
            slow = width is not None and 2 * (hi - lo) > width
            width = hi - lo
            w = (lo + hi) // 2 if slow else lo + round((target - c_lo) * width / (c_hi - c_lo))
            w = min(max(w, lo + 1), hi - 1)
        text = render(w)
        c = count_tokens(text)
        best = min(best, (abs(c - target), text), key=lambda b: b[0])
        rate = max(c - base, 1) / w
        if c <= target:
            lo, c_lo, undershoots = w, c, undershoots + 1
        else:
            hi, c_hi = w, c
    return best[1], best[0]


def tolerance(target_tokens: int) -> int:
    """Allowed |context tokens - target|: 2% or 8 tokens, whichever is larger."""
    return max(8, int(0.02 * target_tokens))


def _depths(task: str, families: list[str], target: int, seed: int) -> list[float]:
    """Evenly spaced depths (i + 0.5) / n per family, in a seeded order."""
    out = [0.0] * len(families)
    for family in dict.fromkeys(families):
        idx = [i for i, f in enumerate(families) if f == family]
        order = list(range(len(idx)))
        random.Random(f"{seed}-{task}-{target}-{family}-depths").shuffle(order)
        for j, i in enumerate(idx):
            out[i] = (order[j] + 0.5) / len(idx)
    return out


def make_example(task: str, family: str, i: int, target: int, seed: int, depth: float,
                 count_tokens: Callable[[str], int]) -> Example:
    return make_examples(task, family, i, target, seed, depth, count_tokens)[0]


def make_examples(task: str, family: str, i: int, target: int, seed: int, depth: float,
                  count_tokens: Callable[[str], int], questions: int = 1) -> list[Example]:
    """Example ``i`` and, with ``questions`` > 1, up to ``questions - 1`` more questions of the
    same context: single-key questions about its other needles (multi-key's distractors,
    multi-query's keys one at a time). Each further question is an example of its own whose
    ``meta["cluster"]`` names the first, so the run can prefill the context once and the
    statistics count the context once; a family with fewer needles asks fewer."""
    # Two local RNGs: the haystack is drawn lazily, so it must not shift the needle draws.
    plan = _PLANNERS[family](random.Random(f"{seed}-{task}-{target}-{i}"), round(depth, 6))
    hay = _Haystack(random.Random(f"{seed}-{task}-{target}-{i}-haystack"))
    render = lambda n_words: _insert(hay.sentences(n_words), plan.needles)  # noqa: E731
    floor = count_tokens(render(0))
    if floor > target + tolerance(target):
        raise BadInput(
            f"dataset.lengths: {target} tokens is too small for synthetic task {family!r}: its "
            f"needles alone take {floor} tokens; use lengths of at least {floor} tokens")
    context, _ = _fit(render, count_tokens, target, tolerance(target), floor)
    meta = {"task": family, "metric": "ruler_all", "target_tokens": target, "seed": seed,
            **plan.depth_meta}
    first_id = f"{task}-{target}-{i}"
    out = [Example(first_id, plan.question, context, plan.answers, meta, plan.answer_prefix)]
    for j, (key, value, at) in enumerate(plan.others[:questions - 1], start=1):
        question, prefix = single_key_question(key)
        # asked alone, a key's value is a multi-key question about that needle
        more = {**meta, "task": "niah_multikey", "depth": at, "cluster": first_id, "question": j}
        more.pop("depths", None)
        out.append(Example(f"{first_id}-q{j}", question, context, [value], more, prefix))
    if len(out) > 1:
        out[0].meta = {**meta, "cluster": first_id, "question": 0}
    return out


def generate_examples(task: str, target_tokens: int, n: int, seed: int,
                      count_tokens: Callable[[str], int],
                      families: list[str] | None = None, questions: int = 1) -> list[Example]:
    """``n`` examples of ``task`` (or "mix": example i is families[i % len(families)], by
    default all of SYNTHETIC_TASKS).

    Each context has ``target_tokens`` tokens by ``count_tokens`` within ``tolerance()``; the
    same arguments always give identical examples.
    """
    if task != "mix" and task not in SYNTHETIC_TASKS:
        raise BadInput(f"unknown synthetic task {task!r}; allowed: "
                       f"{', '.join(SYNTHETIC_TASKS)}, mix")
    if target_tokens < 1 or n < 0:
        raise BadInput(f"target_tokens must be >= 1 and n >= 0; got {target_tokens} and {n}")
    cycle = list(families or SYNTHETIC_TASKS)
    if unknown := [f for f in cycle if f not in SYNTHETIC_TASKS]:
        raise BadInput(f"unknown synthetic tasks {unknown}; allowed: {', '.join(SYNTHETIC_TASKS)}")
    families = [cycle[i % len(cycle)] if task == "mix" else task for i in range(n)]
    depths = _depths(task, families, target_tokens, seed)
    return [ex for i, (f, d) in enumerate(zip(families, depths))
            for ex in make_examples(task, f, i, target_tokens, seed, d, count_tokens, questions)]
