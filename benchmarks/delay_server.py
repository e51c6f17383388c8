"""A fixed-delay OpenAI-compatible server, the other end of benchmarks/client_throughput.py.

Every POST is answered ``--delay-ms`` after it arrives: a streamed answer of ``--tokens`` SSE
chunks plus a usage chunk and ``[DONE]`` (or one JSON body when the request does not stream).
By default the whole answer goes out in one write at the delay; with ``--token-gap-ms G`` the
chunks go out G ms apart, as a server decoding token by token sends them, and the last one
still ends at the delay. It is a bare asyncio HTTP/1.1 keep-alive server, so its own cost per
request stays far below the client's and the benchmark measures the client. Prints
``PORT <n>`` once it listens.

    .venv/bin/python benchmarks/delay_server.py --delay-ms 50 --tokens 16 [--token-gap-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json


def _stream_events(tokens: int) -> list[bytes]:
    """The SSE events of one answer: the text chunks, then the usage chunk and [DONE]."""
    def chunk(text: str, finish: str | None) -> str:
        return json.dumps({"id": "b", "object": "chat.completion.chunk", "model": "bench",
                           "choices": [{"index": 0, "delta": {"content": text},
                                        "finish_reason": finish}]})
    events = [chunk(f" t{i}", "length" if i == tokens - 1 else None) for i in range(tokens)]
    events.append(json.dumps({"id": "b", "choices": [], "usage": {
        "prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens}}))
    events.append("[DONE]")
    return [f"data: {e}\n\n".encode() for e in events]


def _stream_pieces(tokens: int, spread: bool) -> list[bytes]:
    """What each write sends: everything at once, or one text chunk per write (the last write
    carries the last chunk, the usage chunk and [DONE])."""
    events = _stream_events(tokens)
    if not spread:
        return [b"".join(events)]
    return events[:tokens - 1] + [b"".join(events[tokens - 1:])]


def _json_body(tokens: int) -> bytes:
    return json.dumps({"id": "b", "object": "chat.completion", "model": "bench", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": " t" * tokens},
         "finish_reason": "length"}], "usage": {
        "prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens}}).encode()


def _head(content_type: str, length: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _response(content_type: str, body: bytes) -> bytes:
    return _head(content_type, len(body)) + body


async def _serve(delay_s: float, tokens: int, port: int, gap_s: float) -> None:
    pieces = _stream_pieces(tokens, spread=gap_s > 0)
    pieces[0] = _head("text/event-stream", sum(map(len, pieces))) + pieces[0]
    first_s = delay_s - gap_s * (len(pieces) - 1)  # so the last piece still leaves at the delay
    whole = _response("application/json", _json_body(tokens))
    models = _response("application/json", b'{"object":"list","data":[{"id":"bench"}]}')

    loop = asyncio.get_running_loop()

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
                elif b'"stream":true' in body.replace(b" ", b""):
                    # each piece at its own time from arrival, so timer overshoots don't add up
                    start = loop.time()
                    for i, piece in enumerate(pieces):
                        await asyncio.sleep(start + first_s + i * gap_s - loop.time())
                        writer.write(piece)
                        await writer.drain()
                else:
                    await asyncio.sleep(delay_s)
                    writer.write(whole)
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
    parser.add_argument("--token-gap-ms", type=float, default=0.0)
    args = parser.parse_args()
    if args.token_gap_ms * (args.tokens - 1) > args.delay_ms:
        parser.error("--token-gap-ms x (--tokens - 1) must fit in --delay-ms")
    try:
        asyncio.run(_serve(args.delay_ms / 1000.0, args.tokens, args.port,
                           args.token_gap_ms / 1000.0))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
