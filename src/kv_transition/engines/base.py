"""The Engine protocol: the runner drives every engine through ``generate``."""

from __future__ import annotations

from dataclasses import dataclass, field
import statistics
from typing import Any, Protocol


@dataclass
class GenerationRequest:
    """One question about one context under one KV setting."""

    context: str
    question: str
    max_tokens: int
    temperature: float = 0.0
    policy: str = "full"
    budget: float = 1.0
    query_aware: bool = False
    answer_prefix: str = ""
    seed: int = 0
    # a prompt outside the project's template (the server's free text): prefilled whole, as given
    raw_prompt: str | None = None
    # the context's id when several questions share it: an engine may then prefill and compress
    # it once per setting and answer each question from a copy of that cache
    context_key: str | None = None


@dataclass
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length" | "error" | "timeout"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    ttfb_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    peak_mem_mb: float | None = None
    kv_bytes: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


class EngineError(Exception):
    """A request failed. ``transient`` errors are retried with backoff before being recorded."""

    def __init__(self, message: str, *, transient: bool, kind: str = "ENGINE_ERROR"):
        super().__init__(message)
        self.transient = transient
        self.kind = kind  # failure class to record: ENGINE_ERROR or TIMEOUT


class Engine(Protocol):
    name: str

    def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def count_tokens(self, text: str) -> int: ...

    def warmup(self, policy: str, budget: float) -> None:
        """One untimed request per setting: latency is only honest after a warm-up."""
        ...

    def close(self) -> None: ...


def median_or_none(values: list[float]) -> float | None:
    """Median of per-token timings; None when there were none (a one-token answer)."""
    return statistics.median(values) if values else None
