"""A scriptable, misbehaving OpenAI-compatible HTTP server on loopback, for fault injection.

It is a real server (threaded ``http.server`` on 127.0.0.1, port chosen by the OS) so the engine's
whole HTTP path runs: sockets, headers, status codes, chunked streams, timeouts. Each POST takes
the next scripted ``Reply`` (from ``by_seed[body["seed"]]`` when scripted for that seed, so
concurrent requests get their own faults, else from ``script``); with nothing scripted it answers
normally, streaming when the request asks for it. Like real servers it rejects a body without
``model`` and ``messages``/``prompt`` with a 400, so a malformed request fails loudly.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE = {"prompt_tokens": 42, "completion_tokens": 3, "total_tokens": 45}


@dataclass
class Reply:
    status: int = 200
    text: str = "Paris"  # the answer, for a normal 200 reply
    finish_reason: str | None = "stop"
    extra: dict[str, Any] = field(default_factory=dict)  # merged into a normal reply body
    body: bytes | dict | None = None  # overrides the normal reply body entirely
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait before the status line: a slow first byte
    # streaming (used when the request has "stream": true and body is None)
    chunks: list[str] | None = None  # text pieces; default: the text word by word
    chunk_delay_s: float = 0.0
    pings: bool = False  # ": ping" comments and a role-only chunk before the text
    cut_after: int | None = None  # stop after this many text chunks (non-streaming: mid-body)
    cut_mode: str = "reset"  # ...by dropping the connection mid-body, or "eof": a clean end
    usage_chunk: bool = True  # a last chunk holding only usage (when include_usage is asked)
    done: bool = True  # send data: [DONE]
    events: list[str] | None = None  # exact data payloads to send instead of the normal ones
    keep_open_s: float = 0.0  # keep the stream open this long after [DONE]
    line_end: str = "\n"  # "\r\n" or "\r": SSE allows all three
    fragment: int = 0  # send each event in pieces of this many bytes, each flushed on its own
    blank_after_last: bool = True  # False: the last event lacks its blank line (just ends)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
    return Reply(status=status, body=body, headers=headers or {})


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeOpenAIServer:
    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.by_seed: dict[int, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.models_status = 200
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 128  # a burst of concurrent connects is not refused
        # A short poll interval makes shutdown (each test's teardown) near-instant.
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases handlers sleeping in a slow reply
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def next_reply(self, seen: Seen) -> Reply:
        seed = seen.body.get("seed") if isinstance(seen.body, dict) else None
        with self._lock:
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.by_seed.get(seed)
            if scripted:
                return scripted.pop(0)
            return self.script.pop(0) if self.script else Reply()

    def finished(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def posts_for(self, seed: int) -> int:
        return sum(1 for s in self.seen
                   if s.method == "POST" and isinstance(s.body, dict) and s.body.get("seed") == seed)

    def wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _missing_fields(path: str, body: Any) -> str | None:
    if not isinstance(body, dict) or "model" not in body:
        return "'model' is required"
    needed = "messages" if path.endswith("/chat/completions") else "prompt"
    return None if needed in body else f"{needed!r} is required for {path}"


def _normal_body(path: str, body: dict, reply: Reply) -> dict:
    chat = path.endswith("/chat/completions")
    choice: dict[str, Any] = {"index": 0, "finish_reason": reply.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": reply.text}
    else:
        choice["text"] = reply.text
    payload = {
        "id": "cmpl-1",
        "object": "chat.completion" if chat else "text_completion",
        "model": body.get("model"),
        "choices": [choice],
        "usage": dict(USAGE),
    }
    payload.update(reply.extra)
    return payload


def _pieces(reply: Reply) -> list[str]:
    if reply.chunks is not None:
        return list(reply.chunks)
    words = reply.text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _chunk(chat: bool, text: str | None, finish: str | None = None, role: bool = False) -> dict:
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
    return {"id": "cmpl-1", "object": "chat.completion.chunk" if chat else "text_completion",
            "choices": [choice]}


def _stream_events(path: str, body: dict, reply: Reply) -> list[str | None]:
    """The data payloads of a streamed answer; None marks where the stream is cut."""
    chat = path.endswith("/chat/completions")
    events: list[str | None] = []
    if reply.pings:
        events.append(":ping")
        events.append(json.dumps(_chunk(chat, "" if chat else None, role=True)))
    pieces = _pieces(reply)
    for i, piece in enumerate(pieces):
        if reply.cut_after is not None and i == reply.cut_after:
            return events + [None]
        last = i == len(pieces) - 1
        chunk = _chunk(chat, piece, reply.finish_reason if last else None)
        if last:
            chunk.update(reply.extra)
        events.append(json.dumps(chunk))
        if reply.pings:
            events.append(":ping")
    include_usage = (body.get("stream_options") or {}).get("include_usage")
    if include_usage and reply.usage_chunk:
        events.append(json.dumps({"id": "cmpl-1", "choices": [], "usage": dict(USAGE)}))
    if reply.done:
        events.append("[DONE]")
    return events


def _handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            server.record(Seen("GET", self.path, _lower(self.headers), None))
            if self.path.endswith("/models") and server.models_status == 200:
                self._write(200, {"object": "list", "data": [{"id": "fake-model"}]})
            else:
                self._write(server.models_status, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            reply = server.next_reply(Seen("POST", self.path, _lower(self.headers), body))
            self._counted = False
            try:
                self._answer(body, reply)
            finally:
                self._finished()

        def _finished(self) -> None:
            if not self._counted:
                self._counted = True
                server.finished()

        def _delay(self, seconds: float) -> bool:
            """Wait before answering; False if the client hung up meanwhile (it timed out).

            A request its client gave up on leaves the in-flight count at once: the client's
            concurrency cap is about what it waits for, not what a slow server still works on.
            """
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                server.wait(min(0.02, left))
                if self._client_gone():
                    self._finished()
                    self.close_connection = True
                    return False
            return True

        def _client_gone(self) -> bool:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _answer(self, body: Any, reply: Reply) -> None:
            if reply.delay_s and not self._delay(reply.delay_s):
                return
            problem = _missing_fields(self.path, body)
            if problem and reply.body is None:
                self._write(400, {"error": {"message": problem}})
            elif reply.body is not None:
                self._write(reply.status, reply.body, reply.headers)
            elif reply.events is not None or (body.get("stream") and reply.status == 200):
                events = reply.events if reply.events is not None else \
                    _stream_events(self.path, body, reply)
                self._stream(events, reply)
            else:
                self._write(reply.status, _normal_body(self.path, body, reply), reply.headers,
                            cut=reply.cut_after is not None)

        def _stream(self, events: list[str | None], reply: Reply) -> None:
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i, event in enumerate(events):
                    if event is None:  # the cut
                        if reply.cut_mode == "eof":
                            break
                        self.close_connection = True  # drop it mid-body
                        return
                    line = event if event.startswith(":") else f"data: {event}"
                    ends = 2 if reply.blank_after_last or i < len(events) - 1 else 1
                    self._send_event(f"{line}{reply.line_end * ends}".encode(), reply)
                    if reply.chunk_delay_s:
                        server.wait(reply.chunk_delay_s)
                if reply.keep_open_s:
                    server.wait(reply.keep_open_s)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send_event(self, data: bytes, reply: Reply) -> None:
            if not reply.fragment:
                self._send_chunk(data)
                return
            for start in range(0, len(data), reply.fragment):
                self._send_chunk(data[start:start + reply.fragment])
                time.sleep(0.001)  # so the client reads the pieces one by one

        def _send_chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _write(self, status: int, body: bytes | dict, headers: dict | None = None,
                   cut: bool = False) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if cut:  # half the promised body, then the connection drops
                    self.wfile.write(data[:len(data) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to answer

    return Handler
