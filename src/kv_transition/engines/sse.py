"""Server-sent events as OpenAI-compatible servers stream them, parsed line by line.

The rules follow the WHATWG event-stream format, because real servers use more of it than the
OpenAI docs show: ``:`` comment lines as keep-alive pings (SGLang, proxies), ``event:`` lines
(llama.cpp error events), a ``data:`` field split over several lines, CRLF line ends. An event
ends at a blank line; a stream that ends without one leaves a pending event, which ``flush``
returns so the caller can decide whether the stream was cut.

``LineSplitter`` turns the bytes as they arrive into those lines: a read may end anywhere,
even between the CR and LF of one line end.
"""

from __future__ import annotations

from dataclasses import dataclass

DONE = "[DONE]"  # OpenAI's end-of-stream sentinel, sent as the data of the last event


@dataclass
class SSEEvent:
    data: str
    event: str = "message"


class SSEDecoder:
    """Feed lines (without their line ends), get complete events back."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""

    def feed(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith("data: "):  # the common case, first
            self._data.append(line[6:])
            return None
        if line.startswith(":"):
            return None  # a comment: keep-alive ping, nothing to parse
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        # "id" and "retry" steer browser reconnection; a one-shot request has no use for them
        return None

    def flush(self) -> SSEEvent | None:
        """The event still pending when the stream ended, if any."""
        return self._dispatch()

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent("\n".join(self._data), self._event or "message")
        self._data, self._event = [], ""
        return event


class LineSplitter:
    """Bytes as they arrive → complete lines, split at CRLF, LF or CR (the SSE line ends)."""

    def __init__(self) -> None:
        self._tail = b""
        self._after_cr = False  # the last read ended in CR: an LF starting the next is its pair

    def feed(self, chunk: bytes) -> list[str]:
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        data = self._tail + chunk
        self._after_cr = data.endswith(b"\r")
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        self._tail = lines.pop()  # no line end yet: wait for the rest
        # a line is whole, so no UTF-8 sequence is split inside it
        return [line.decode("utf-8", "replace") for line in lines]

    def flush(self) -> list[str]:
        """The last line, when the stream ended without a line end."""
        tail, self._tail = self._tail, b""
        return [tail.decode("utf-8", "replace")] if tail else []
