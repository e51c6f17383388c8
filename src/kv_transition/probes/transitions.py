"""Where the content changes: per-token text and a line-based semantic-transition marker.

A transition is the first token of a non-blank line that follows a blank line (a paragraph
break) or whose class differs from the previous non-blank line's class, with classes
``fence`` (a line starting with three backticks), ``code`` and ``prose``. The code test is a
heuristic (indentation, a leading keyword, brackets, semicolons, assignments); it is enough to
find code↔prose switches and topic paragraphs in the prompt suite, not a parser.
"""

from __future__ import annotations

import re

import numpy as np

_CODE = re.compile("|".join((
    r"^(\s{4}|\t)\S",                        # indented block
    r"^\s*(def|class)\s+\w+",                  # definitions
    r"^\s*(import\s+[\w.]+\s*$|from\s+[\w.]+\s+import\b)",  # imports
    r"^\s*(return|raise|assert)\b",
    r"^\s*(for|while|if|elif|with|except)\b.*:\s*$",
    r"^\s*(else|try|finally):\s*$",
    r"^\s*@\w+",                              # decorators
    r"[{};]\s*$",                             # braces and semicolons at the end
    r"\w\(.*\)\s*:?\s*$",                      # a call or signature ends the line
    r"^\s*[\w.\[\]]+\s*[+\-*/]?=\s*\S",        # an assignment
)))
_CONTEXT = 16  # tokens of left context when decoding one token's text


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds, decoded with left context (word-piece spacing survives)."""
    decode = lambda toks: tokenizer.decode(toks, skip_special_tokens=False,  # noqa: E731
                                           clean_up_tokenization_spaces=False)
    pieces = []
    for i in range(len(ids)):
        left = ids[max(0, i - _CONTEXT): i]
        before, after = decode(left), decode(left + [ids[i]])
        pieces.append(after[len(before):] if after.startswith(before) else decode([ids[i]]))
    return pieces


def line_class(line: str) -> str:
    if line.lstrip().startswith("```"):
        return "fence"
    return "code" if _CODE.search(line) else "prose"


def transition_mask(pieces: list[str]) -> np.ndarray:
    """Boolean per position: the token opens a new paragraph or switches code/prose."""
    mask = np.zeros(len(pieces), dtype=bool)
    if not pieces:
        return mask
    owner = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])
    text = "".join(pieces)
    offset, prev_class, blank_before = 0, None, False
    for line in text.split("\n"):
        if line.strip():
            cls = line_class(line)
            first = owner[offset + len(line) - len(line.lstrip())]
            if prev_class is not None and (blank_before or cls != prev_class):
                mask[first] = True
            prev_class, blank_before = cls, False
        else:
            blank_before = prev_class is not None
        offset += len(line) + 1
    return mask
