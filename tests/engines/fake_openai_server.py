"""A scriptable OpenAI-compatible HTTP server on loopback, for testing the ``openai`` engine.

It is a real server (threaded ``http.server`` on 127.0.0.1, port chosen by the OS) so the engine's
whole HTTP path runs: sockets, headers, status codes, timeouts. Each POST takes the next scripted
``Reply``; when the script is empty it answers normally. Like real servers it rejects a body
without ``model`` and ``messages``/``prompt`` with a 400, so a malformed request fails loudly.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    text: str = "Paris"  # the answer, for a normal 200 reply
    finish_reason: str | None = "stop"
    extra: dict[str, Any] = field(default_factory=dict)  # merged into a normal reply body
    body: bytes | dict | None = None  # overrides the normal reply body entirely
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # wait before answering (to trigger client timeouts)


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
        self.seen: list[Seen] = []
        self.models_status = 200
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
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
        with self._lock:
            self.seen.append(seen)
            return self.script.pop(0) if self.script else Reply()

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
        "usage": {"prompt_tokens": 42, "completion_tokens": 3, "total_tokens": 45},
    }
    payload.update(reply.extra)
    return payload


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
            if reply.delay_s:
                server.wait(reply.delay_s)
            problem = _missing_fields(self.path, body)
            if problem and reply.body is None:
                self._write(400, {"error": {"message": problem}})
            elif reply.body is None:
                self._write(reply.status, _normal_body(self.path, body, reply), reply.headers)
            else:
                self._write(reply.status, reply.body, reply.headers)

        def _write(self, status: int, body: bytes | dict, headers: dict | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to answer

    return Handler
