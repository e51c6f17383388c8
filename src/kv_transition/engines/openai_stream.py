"""One streamed OpenAI answer, put back together from its chunks with the time of each token.

Chunks carry text deltas (``choices[0].delta.content`` for chat, ``choices[0].text`` for
completions), a finish reason near the end, and with ``stream_options.include_usage`` a last
chunk that holds only ``usage`` (its ``choices`` is empty). Servers also report on themselves
in top-level fields, kept verbatim: vLLM ``metrics``, llama.cpp ``timings`` and this project's
``kv_telemetry`` (see ``kv_transition.serve``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SERVER_REPORTS = ("metrics", "timings", "kv_telemetry")
_IDENTITY = ("id", "object", "model", "created", "system_fingerprint")


class MalformedChunk(ValueError):
    """A chunk that is JSON but not shaped like an OpenAI stream chunk."""


@dataclass
class StreamAssembly:
    started: float  # perf_counter when the request was sent
    parts: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # perf_counter of each chunk with text
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    reports: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    n_chunks: int = 0
    done: bool = False  # the [DONE] sentinel arrived

    def add(self, chunk: Any, now: float) -> None:
        if not isinstance(chunk, dict):
            raise MalformedChunk(f"a chunk must be a JSON object, got {type(chunk).__name__}")
        self.n_chunks += 1
        if not self.identity:  # every chunk repeats it; the first one is enough
            self.identity = {key: chunk[key] for key in _IDENTITY if key in chunk}
        # usage and server reports are rare (null or absent in all but the last chunk): the
        # truth test first keeps the common chunk cheap
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            self.usage = usage
        for key in SERVER_REPORTS:
            report = chunk.get(key)
            if report and isinstance(report, dict):
                self.reports[key] = report
        choices = chunk.get("choices")
        if not choices:
            return
        if not isinstance(choices, list):
            raise MalformedChunk("'choices' must be a list")
        for choice in choices:
            self._add_choice(choice, now)

    def _add_choice(self, choice: Any, now: float) -> None:
        if not isinstance(choice, dict):
            raise MalformedChunk("each choice must be a JSON object")
        if choice.get("index", 0) != 0:
            return  # we ask for one choice (n=1); ignore any others
        text = _delta_text(choice)
        if text:
            self.parts.append(text)
            self.arrivals.append(now)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    @property
    def complete(self) -> bool:
        """The server said the answer ended; a stream that just stops was cut."""
        return self.finish_reason is not None or self.done

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def ttft_s(self) -> float | None:
        return self.arrivals[0] - self.started if self.arrivals else None

    def inter_token_s(self) -> list[float]:
        """Gaps between chunks with text: one per token for most servers, fewer if they batch."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])]

    def payload(self, chat: bool) -> dict[str, Any]:
        """The answer as a non-streaming response body would hold it (stored raw)."""
        choice: dict[str, Any] = {"index": 0, "finish_reason": self.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": self.text}
        else:
            choice["text"] = self.text
        body = {**self.identity, "choices": [choice], "usage": self.usage, **self.reports}
        body["stream"] = {"chunks": self.n_chunks, "done_sentinel": self.done}
        return body


def _delta_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
    else:
        content = choice.get("text")
    if content is not None and not isinstance(content, str):
        raise MalformedChunk("choice text/content must be a string")
    return content or ""
