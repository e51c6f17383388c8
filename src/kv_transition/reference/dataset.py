"""Training batches from the synthetic generator: dense supervision and a length curriculum.

A training sequence is exactly what the ``hf`` engine feeds the model (BOS, the prompt's
context part, the question part), followed by the answer and EOS, and then by the other
questions its needles answer, each with its answer (``qa.asks_for``). Only answer tokens and
their EOS carry loss. Context lengths follow a curriculum: the cap stays at ``short_len``
until the model retrieves (answer-digit accuracy reaches ``gate_acc`` in a log window) or
``hold_frac`` of the steps have passed, then grows to ``max_len`` over ``ramp_frac`` of the
steps, since a model that has not yet learned to retrieve at 256 tokens learns nothing at
4096 (the probes' finding). All rows of one step share one task family, so they have about the same
length and little of a batch is padding (a mixed batch of 96-token contexts was 40% padding).

Batch ``s`` depends only on (seed, s) and the step at which the ramp started (kept in the
checkpoint), never on the batches before it: a resumed run sees the same data as an
uninterrupted one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from kv_transition.data import prompt as prompt_tpl
from kv_transition.data import synthetic, vocab
from kv_transition.data.normalize import Example
from kv_transition.reference import binding, formats, qa, repeats
from kv_transition.reference.model import digit_ids, special_ids, word_tokenizer

IGNORE = -100  # label of tokens without loss (torch's cross_entropy ignore_index)
LENGTH_DRAWS = ("uniform", "log")  # DataPlan.family_length_draw

# The CPU recipe's families (MODEL_CARD.md, "Training"): the key -> value retrieval tasks.
# Multi-key weighs most: it asks four questions of one context, the densest supervision, and
# it is the haystack the functional canary uses. Variable tracking (multi-hop) is left out: a
# 1 M-parameter model on a 2.5-hour CPU budget does not learn it (see the card).
# ``recall`` steps are contexts of needles only (1 to RECALL_MAX_NEEDLES of them, no haystack),
# every key asked: the key -> value binding in its barest form, where a probe saw it form after
# a few hundred steps with two needles while the haystack recipes stayed at chance (recipe G).
RECALL = "recall"
RECALL_MAX_NEEDLES = 8
DEFAULT_FAMILY_WEIGHTS = {RECALL: 2.0, "niah_single": 1.0, "niah_multikey": 2.0,
                          "niah_multivalue": 1.0, "niah_multiquery": 1.0}
DEFAULT_FORMAT_WEIGHTS = {formats.TEXT: 2.0, formats.PYTHON: 1.0, formats.JSON: 1.0}


@dataclass
class DataPlan:
    """Everything that decides the training data; part of the checkpoint's identity."""

    seed: int = 0
    steps: int = 4800
    tokens_per_step: int = 8192
    min_len: int = 96
    max_len: int = 2304
    ramp_frac: float = 0.5
    short_len: int = 256
    hold_frac: float = 0.3
    gate_acc: float = 0.8
    repeat_spans: int = 2  # spans of each context copied later into it (reference/repeats.py)
    # Share of family steps whose length is drawn from [min_len, short_len] whatever the cap:
    # a uniform draw up to 2,304 tokens leaves the short bins ~7% of the steps, and four values
    # packed into 128 tokens are where a multi-value answer mixes its values up (recipe L, run 3).
    # 0 draws nothing from the step's generator, so runs without it see the same batches.
    short_share: float = 0.0
    # A family's own length range, drawn in place of the step's length (the cap still bounds
    # it): multi-key errs at the longest bin and multi-value at the shortest, which one
    # shared distribution cannot both serve (recipe M). Empty draws nothing extra, so older
    # runs see the same batches.
    family_lengths: dict[str, tuple[int, int]] = field(default_factory=dict)
    # How a range is drawn: "uniform" in tokens, or "log" (uniform in log length), which gives
    # every doubling the same share as the length bins do: a range of [96, 2,304] then puts 44%
    # of its steps at 384 tokens or less and 26% at 1,024 or more.
    family_length_draw: str = "uniform"
    family_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FAMILY_WEIGHTS))
    format_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FORMAT_WEIGHTS))
    # Binding stages before the families (reference/binding.py): needle-only rows in each
    # wording in turn, each until the answers' first digit groups reach its ``binding_gate`` in
    # a log window or its ``binding_max_steps`` have passed. Empty: the families from step 0.
    # Gate and steps are one value for every stage or a tuple with one per stage: the first
    # stage is worth binding firmly (the second transfers from it), the second only until it
    # binds, since its steps come out of the families' (recipe K, MODEL_CARD.md).
    binding: tuple[str, ...] = ()
    binding_needles: int = 4
    binding_repeats: int = 3
    binding_rows: int = 32
    binding_gate: float | tuple[float, ...] = 0.9
    binding_max_steps: int | tuple[int, ...] = 4000

    def stage_limits(self, stage: int) -> tuple[float, int]:
        """(gate, max steps) of binding stage ``stage``."""
        pick = lambda v: v[stage] if isinstance(v, (tuple, list)) else v  # noqa: E731
        return pick(self.binding_gate), pick(self.binding_max_steps)

    def stage_of(self, step: int, stage_starts: list[int]) -> int:
        """Index of the stage batch ``step`` belongs to; ``len(binding)`` is the families.

        ``stage_starts`` are the steps at which the stages after the first began (the training
        loop appends them and the checkpoint keeps them), so a batch depends on them, the seed
        and the step alone.
        """
        return min(len(self.binding), sum(1 for start in stage_starts if start <= step))

    def ramp_start(self, gate_step: int | None, families_start: int = 0) -> float:
        """The ramp starts when the gate opened, or when the longest hold ends."""
        hold = families_start + self.hold_frac * self.steps
        return hold if gate_step is None else min(hold, gate_step)

    def length_cap(self, step: int, gate_step: int | None = None,
                   families_start: int = 0) -> int:
        """The longest context allowed at ``step``: ``short_len``, linear growth, ``max_len``."""
        start = min(max(self.short_len, self.min_len), self.max_len)
        ramp = max(1.0, self.ramp_frac * self.steps)
        grown = min(1.0, max(0.0, step - self.ramp_start(gate_step, families_start)) / ramp)
        return round(start + (self.max_len - start) * grown)

    def family_length(self, family: str, cap: int, rng: random.Random) -> int:
        """A length from ``family``'s own range, no longer than ``cap``."""
        low, high = self.family_lengths[family]
        high = min(high, cap)
        low = min(low, high)
        if self.family_length_draw == "log":
            return min(high, max(low, round(math.exp(rng.uniform(math.log(low),
                                                                  math.log(high))))))
        return rng.randint(low, high)

    def step_rng(self, step: int) -> random.Random:
        return random.Random(f"{self.seed}-reference-train-{step}")


def _generate(family: str, step: int, j: int, length: int, seed: int, depth: float,
              count) -> Example:
    # The generator's per-example builder is used directly because training needs a fresh
    # depth per example; the public generate_examples spreads depths over a fixed grid of n.
    return synthetic.make_example(f"train-{step}", family, j, length, seed, depth, count)


def recall_example(step: int, j: int, count: int, rng: random.Random) -> Example:
    """A context of ``count`` needles in the generator's wording, nothing else."""
    keys = rng.sample(vocab.KEYS, count)
    values = synthetic.numbers(rng, count, synthetic.NIAH_DIGITS)
    context = " ".join(synthetic.needle(k, v) for k, v in zip(keys, values))
    question, prefix = synthetic.single_key_question(keys[0])
    return Example(f"recall-{step}-{j}", question, context, [values[0]],
                   {"task": "niah_multikey"}, prefix)


def build_sequence(tok, example: Example, asks: list[qa.Ask], rng: random.Random | None = None,
                   spans: int = 0) -> tuple[list[int], list[bool]]:
    """(token ids, loss mask): tokenized piece by piece, like the ``hf`` engine encodes.

    With ``spans``, that many spans of the context are copied later into it (``repeats``).
    """
    ids_of = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    special = special_ids(tok)
    ids = [special["bos"]] + ids_of(prompt_tpl.context_part(example.context))
    mask = [False] * len(ids)
    if spans and rng is not None:
        newline = tok.token_to_id("\n")
        start = ids.index(newline) + 2  # after the instruction and its blank line
        end = len(ids)
        while ids[end - 1] == newline:  # copies stay inside the text, before its blank line
            end -= 1
        digits = set(digit_ids(tok))
        repeats.add_repeats(ids, mask, start, end, rng, spans, digits, tok.token_to_id("."),
                            needles=example.meta["task"] != "niah_multivalue")
    for ask in asks:
        question = ids_of(prompt_tpl.question_part(ask.question, ask.answer_prefix))
        answer = ids_of(ask.target) + [special["eos"]]
        ids += question + answer
        mask += [False] * len(question) + [True] * len(answer)
    return ids, mask


def collate(sequences: list[tuple[list[int], list[bool]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest; labels are the ids where the mask is set, else IGNORE."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    for row, (ids, mask) in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(ids)] = torch.tensor([i if m else IGNORE for i, m in zip(ids, mask)])
    return {"input_ids": input_ids, "labels": labels}


class StepBatches(torch.utils.data.Dataset):
    """Item ``s`` is the whole batch of step ``s`` (use with ``batch_size=None``)."""

    def __init__(self, plan: DataPlan, gate_step: int | None = None,
                 stage_starts: list[int] | None = None):
        self.plan = plan
        self.gate_step = gate_step  # set by the training loop when the gate opens
        self.stage_starts = list(stage_starts or [])  # appended by the loop as stages end
        self._tok = None  # built lazily, once per loader worker

    @property
    def stages_done(self) -> bool:
        return len(self.stage_starts) >= len(self.plan.binding)

    @property
    def families_start(self) -> int | None:
        """The step the task families began at; None while binding stages still run."""
        if not self.stages_done:
            return None
        return self.stage_starts[len(self.plan.binding) - 1] if self.plan.binding else 0

    def __len__(self) -> int:
        return self.plan.steps

    @property
    def tok(self):
        if self._tok is None:
            self._tok = word_tokenizer()
        return self._tok

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        plan, rng = self.plan, self.plan.step_rng(step)
        stage = plan.stage_of(step, self.stage_starts)
        if stage < len(plan.binding):
            return self._binding_batch(rng, plan.binding[stage])
        cap = plan.length_cap(step, self.gate_step, self.families_start)
        if plan.short_share and rng.random() < plan.short_share:
            cap = min(cap, max(plan.short_len, plan.min_len))
        length = rng.randint(plan.min_len, cap)
        count = lambda text: len(self.tok.encode(text, add_special_tokens=False).ids)  # noqa: E731
        family = rng.choices(list(plan.family_weights), list(plan.family_weights.values()))[0]
        if family == RECALL:
            return self._recall_batch(step, rng)
        if family in plan.family_lengths:  # drawn after the step's length, which stays drawn
            # so that every later draw of a plan without ranges is the one it always was
            length = plan.family_length(family, cap, rng)
        sequences = []
        for j in range(max(1, plan.tokens_per_step // length)):
            example = _generate(family, step, j, length, plan.seed, rng.random(), count)
            asks = qa.asks_for(example, rng, plan.format_weights)
            sequences.append(build_sequence(self.tok, example, asks, rng, plan.repeat_spans))
        batch = collate(sequences, special_ids(self.tok)["pad"])
        batch["context_tokens"] = torch.tensor(length)
        return batch

    def _binding_batch(self, rng: random.Random, wording: str) -> dict[str, torch.Tensor]:
        """``binding_rows`` needle-only rows; no language-modelling loss (``lm`` 0)."""
        plan, bos = self.plan, special_ids(self.tok)["bos"]
        rows = [binding.binding_row(self.tok, rng, plan.binding_needles, plan.binding_repeats,
                                    wording) for _ in range(plan.binding_rows)]
        batch = collate([([bos] + ids, [False] + mask) for ids, mask in rows],
                        special_ids(self.tok)["pad"])
        batch["context_tokens"] = torch.tensor(max(len(ids) for ids, _ in rows))
        batch["lm"] = torch.tensor(0)
        return batch

    def _recall_batch(self, step: int, rng: random.Random) -> dict[str, torch.Tensor]:
        """Needle-only rows until the step's token budget is spent (questions included).

        One needle count per step, as one family per step: rows of about one length, little
        padding (a count per row made a batch ~4x its tokens in padding).
        """
        sequences, spent, count = [], 0, rng.randint(1, RECALL_MAX_NEEDLES)
        while spent < self.plan.tokens_per_step:
            example = recall_example(step, len(sequences), count, rng)
            asks = qa.asks_for(example, rng, self.plan.format_weights)
            sequences.append(build_sequence(self.tok, example, asks))
            spent += len(sequences[-1][0])
        batch = collate(sequences, special_ids(self.tok)["pad"])
        batch["context_tokens"] = torch.tensor(max(len(ids) for ids, _ in sequences))
        return batch
