"""A fixed-delay OpenAI-compatible server, the other end of benchmarks/client_throughput.py.

Every POST is answered ``--delay-ms`` after it arrives: a streamed answer of ``--tokens`` SSE
chunks plus a usage chunk and ``[DONE]`` (or one JSON body when the request does not stream).
It is a bare asyncio HTTP/1.1 keep-alive server, so its own cost per request stays far below
the client's and the benchmark measures the client. Prints ``PORT <n>`` once it listens.

    .venv/bin/python benchmarks/delay_server.py --delay-ms 50 --tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json


def _stream_body(tokens: int) -> bytes:
    def chunk(text: str, finish: str | None) -> str:
        return json.dumps({"id": "b", "object": "chat.completion.chunk", "model": "bench",
                           "choices": [{"index": 0, "delta": {"content": text},
                                        "finish_reason": finish}]})
    events = [chunk(f" t{i}", "length" if i == tokens - 1 else None) for i in range(tokens)]
    events.append(json.dumps({"id": "b", "choices": [], "usage": {
        "prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens}}))
    events.append("[DONE]")
    return "".join(f"data: {e}\n\n" for e in events).encode()


def _json_body(tokens: int) -> bytes:
    return json.dumps({"id": "b", "object": "chat.completion", "model": "bench", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": " t" * tokens},
         "finish_reason": "length"}], "usage": {
        "prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens}}).encode()


def _response(content_type: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _serve(delay_s: float, tokens: int, port: int) -> None:
    streamed = _response("text/event-stream", _stream_body(tokens))
    whole = _response("application/json", _json_body(tokens))
    models = _response("application/json", b'{"object":"list","data":[{"id":"bench"}]}')

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"GET"):
                    writer.write(models)
                else:
                    await asyncio.sleep(delay_s)
                    wants_stream = b'"stream":true' in body.replace(b" ", b"")
                    writer.write(streamed if wants_stream else whole)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.delay_ms / 1000.0, args.tokens, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
