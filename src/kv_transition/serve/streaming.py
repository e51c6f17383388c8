"""Text deltas for a stream whose concatenation is exactly the non-streamed answer.

``HFEngine`` answers ``decode(tokens without EOS, skip_special_tokens=True).strip()``. Decoding
token by token is not additive (a word piece changes how its neighbour decodes, a multi-byte
character arrives in parts), so each step decodes the whole answer so far and sends only what
extends the text already sent: held back while it ends in an incomplete character (U+FFFD) or
while trailing whitespace might still be stripped. ``finish`` sends the rest of the final
text. Decoding the prefix each step is quadratic in answer length, which for the short answers
of a benchmark is microseconds.
"""

from __future__ import annotations

from typing import Any


class TextDeltas:
    def __init__(self, tokenizer: Any, eos_ids: set[int]):
        self._tokenizer = tokenizer
        self._eos = eos_ids
        self._ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        """The new text after ``token`` ('' while nothing can be sent yet)."""
        if token in self._eos:
            return ""
        self._ids.append(token)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        return self._extend(text.strip())

    def finish(self, final_text: str) -> str:
        """What is left of the answer; '' if the stream already sent it all."""
        return self._extend(final_text)

    def _extend(self, text: str) -> str:
        if not text.startswith(self.sent):
            return ""  # the decoding changed what came before; wait for a consistent prefix
        delta = text[len(self.sent):]
        self.sent = text
        return delta
