"""The prompt template, versioned and hashed into the manifest.

The prompt is split in two parts because KV policies compress the *context* prefill: with
``query_aware`` false the question part is fed after compression, as kvpress's pipeline does.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from kv_transition.data.normalize import Example

PROMPT_TEMPLATE_VERSION = "v1"

CONTEXT_TEMPLATE = "Read the text below and answer the question after it.\n\n{context}\n\n"
QUESTION_TEMPLATE = "Question: {question}\nAnswer:{prefix}"


def context_part(context: str) -> str:
    return CONTEXT_TEMPLATE.format(context=context)


def question_part(question: str, answer_prefix: str = "") -> str:
    prefix = f" {answer_prefix}" if answer_prefix else ""
    return QUESTION_TEMPLATE.format(question=question, prefix=prefix)


def full_prompt(context: str, question: str, answer_prefix: str = "") -> str:
    return context_part(context) + question_part(question, answer_prefix)


def template_hash() -> str:
    """Changes whenever the wording changes, so a manifest pins the prompt it was sized with."""
    text = "\x00".join((PROMPT_TEMPLATE_VERSION, CONTEXT_TEMPLATE, QUESTION_TEMPLATE))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prompt_tokens(example: Example, count: Callable[[str], int]) -> int:
    """Length of the whole prompt the model reads, which is what a bin is about."""
    return count(full_prompt(example.context, example.question, example.answer_prefix))
