"""The canonical example every task source produces."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One evaluation item.

    ``context`` is what a KV policy may compress; ``question`` is asked after it (or inside the
    compressed prefill when ``kv.query_aware`` is true). ``answers`` holds every gold string.
    ``meta`` carries the task family, the scoring metric name and source ids.
    """

    example_id: str
    question: str
    context: str
    answers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    answer_prefix: str = ""


_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Collapse runs of whitespace inside lines but keep paragraph breaks."""
    lines = [_WS.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip()
