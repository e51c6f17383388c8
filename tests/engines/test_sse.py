"""SSE parsing: bytes as reads deliver them → lines → events."""

from __future__ import annotations

import pytest

from kv_transition.engines.sse import LineSplitter, SSEDecoder


def feed_all(lines):
    decoder = SSEDecoder()
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    return events, decoder.flush()


def test_sse_comments_fields_and_multiline_data():
    events, pending = feed_all([
        ": ping", "", "retry: 100", "id: 3", "data: {\"a\":", "data:1}", "",
        "event: error", "data: {\"error\": {}}", "", "", "data: [DONE]"])
    assert [(e.event, e.data) for e in events] == [
        ("message", '{"a":\n1}'), ("error", '{"error": {}}')]
    assert pending.data == "[DONE]"  # a last event without its blank line is not lost


STREAM = "data: Zürich\r\n\r\ndata: 東京\n\ndata: x\r\rdata: [DONE]\n\n".encode()
LINES = ["data: Zürich", "", "data: 東京", "", "data: x", "", "data: [DONE]", ""]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, len(STREAM)])
def test_lines_are_the_same_however_the_reads_split_the_bytes(size):
    # reads of `size` bytes end inside CRLF pairs and inside multi-byte UTF-8 characters
    splitter = LineSplitter()
    lines = []
    for start in range(0, len(STREAM), size):
        lines += splitter.feed(STREAM[start:start + size])
    assert lines + splitter.flush() == LINES


def test_a_cr_at_the_end_of_a_read_is_a_line_end_once():
    splitter = LineSplitter()
    assert splitter.feed(b"data: a\r") == ["data: a"]
    assert splitter.feed(b"") == []  # an empty read changes nothing
    assert splitter.feed(b"\ndata: b\r") == ["data: b"]  # the LF completes the CRLF
    assert splitter.feed(b"\r") == [""]  # a second CR is a blank line
    assert splitter.feed(b"data: c") == [] and splitter.flush() == ["data: c"]
    assert splitter.flush() == []
