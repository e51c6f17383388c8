"""Training batches from the synthetic generator: dense supervision and a length curriculum.

A training sequence is exactly what the ``hf`` engine feeds the model (BOS, the prompt's
context part, the question part), followed by the answer and EOS, and then by the other
questions its needles answer, each with its answer (``qa.asks_for``). Only answer tokens and
their EOS carry loss. Context lengths follow a curriculum: the cap grows from ``min_len`` to
``max_len`` over the first ``curriculum_frac`` of the steps, since a model that has not yet
learned to retrieve at 256 tokens learns nothing at 4096 (the probe's finding).

Batch ``s`` depends only on (seed, s), never on the batches before it: a resumed run sees the
same data as an uninterrupted one, and any number of loader workers gives the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from kv_transition.data import prompt as prompt_tpl
from kv_transition.data import synthetic
from kv_transition.data.normalize import Example
from kv_transition.reference import formats, qa
from kv_transition.reference.model import special_ids, word_tokenizer

IGNORE = -100  # label of tokens without loss (torch's cross_entropy ignore_index)

# Variable tracking gets the most weight: it supervises the fewest tokens per sequence.
DEFAULT_FAMILY_WEIGHTS = {"niah_single": 1.0, "niah_multikey": 1.0, "niah_multivalue": 1.0,
                          "niah_multiquery": 1.0, "variable_tracking": 2.0}
DEFAULT_FORMAT_WEIGHTS = {formats.TEXT: 2.0, formats.PYTHON: 1.0, formats.JSON: 1.0}


@dataclass
class DataPlan:
    """Everything that decides the training data; part of the checkpoint's identity."""

    seed: int = 0
    steps: int = 5000
    tokens_per_step: int = 65536
    min_len: int = 128
    max_len: int = 4608
    curriculum_frac: float = 0.6
    family_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FAMILY_WEIGHTS))
    format_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FORMAT_WEIGHTS))

    def length_cap(self, step: int) -> int:
        """The longest context allowed at ``step``: linear growth, then ``max_len``."""
        ramp = max(1.0, self.curriculum_frac * self.steps)
        return round(self.min_len + (self.max_len - self.min_len) * min(1.0, step / ramp))

    def step_rng(self, step: int) -> random.Random:
        return random.Random(f"{self.seed}-reference-train-{step}")


def _generate(family: str, step: int, j: int, length: int, seed: int, depth: float,
              count) -> Example:
    # The generator's per-example builder is used directly because training needs a fresh
    # depth per example; the public generate_examples spreads depths over a fixed grid of n.
    return synthetic._example(f"train-{step}", family, j, length, seed, depth, count)


def build_sequence(tok, example: Example, asks: list[qa.Ask]) -> tuple[list[int], list[bool]]:
    """(token ids, loss mask): tokenized piece by piece, like the ``hf`` engine encodes."""
    ids_of = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    special = special_ids(tok)
    ids = [special["bos"]] + ids_of(prompt_tpl.context_part(example.context))
    mask = [False] * len(ids)
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

    def __init__(self, plan: DataPlan):
        self.plan = plan
        self._tok = None  # built lazily, once per loader worker

    def __len__(self) -> int:
        return self.plan.steps

    @property
    def tok(self):
        if self._tok is None:
            self._tok = word_tokenizer()
        return self._tok

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        plan, rng = self.plan, self.plan.step_rng(step)
        length = rng.randint(plan.min_len, plan.length_cap(step))
        count = lambda text: len(self.tok.encode(text, add_special_tokens=False).ids)  # noqa: E731
        families = rng.choices(list(plan.family_weights), list(plan.family_weights.values()),
                               k=max(1, plan.tokens_per_step // length))
        sequences = []
        for j, family in enumerate(families):
            example = _generate(family, step, j, length, plan.seed, rng.random(), count)
            sequences.append(build_sequence(self.tok, example,
                                            qa.asks_for(example, rng, plan.format_weights)))
        batch = collate(sequences, special_ids(self.tok)["pad"])
        batch["context_tokens"] = torch.tensor(length)
        return batch
