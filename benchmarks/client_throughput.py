"""Throughput and own overhead of the `openai` engine against a fixed-delay local server.

A server (benchmarks/delay_server.py, its own process) answers every request after a fixed
delay with a streamed answer, in one write or (``--token-gap-ms``) chunk by chunk. With that
delay d, c requests in flight can at best finish c/d per second, so the ratio to c/d shows what
the client loses as concurrency grows (1, 4, 16, 64). Beside it, sequential loops: the engine's
one-at-a-time `generate`, and bare clients reading the stream line by line with no SSE parsing
and no bookkeeping: aiohttp (what the engine uses: the floor under its own cost, alone and at
the highest concurrency) and httpx (sync and async: why the engine does not use it).

Client overhead per request is the client process's CPU time per request (all threads; the
server is another process), and the median latency above the delay. The server's CPU per
request is beside it: both share the machine's cores, so at high request rates the sum is what
caps throughput. Prints a table per delay and writes it to
benchmarks/results/client_throughput_<delay>ms[_gap<G>ms].md.

    .venv/bin/python benchmarks/client_throughput.py [--delay-ms 250 50] [--tokens 16]
        [--token-gap-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.openai_compat import OpenAIEngine
from kv_transition.settings import Settings

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = (1, 4, 16, 64)
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_server_pid: int | None = None  # the delay server, whose CPU time each row also reads


def _server_cpu_s() -> float:
    """User + system CPU time of the delay server so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{_server_pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def _start_server(delay_ms: float, tokens: int,
                  gap_ms: float = 0.0) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("delay_server.py")), "--delay-ms",
         str(delay_ms), "--tokens", str(tokens), "--token-gap-ms", str(gap_ms)],
        stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    if not line.startswith("PORT "):
        server.kill()
        raise SystemExit(f"delay server did not start: {line!r}")
    return server, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def _engine(base_url: str, concurrency: int, stream: bool = True) -> OpenAIEngine:
    settings = Settings.model_validate({
        "model": {"name": "bench"},
        "engine": {"kind": "openai", "base_url": base_url, "concurrency": concurrency,
                   "stream": stream, "request": {"max_retries": 0, "timeout_s": 30}}})
    return OpenAIEngine(settings)


def _requests(n: int, tokens: int) -> list[GenerationRequest]:
    context = "lorem ipsum " * 200  # a realistic body size: a few KB of prompt per request
    return [GenerationRequest(context, f"question {i}?", tokens, seed=i) for i in range(n)]


def _clock() -> tuple[float, float, float]:
    return time.perf_counter(), time.process_time(), _server_cpu_s()


def _since(start: tuple[float, float, float]) -> tuple[float, float, float]:
    """Wall seconds, client CPU seconds and server CPU seconds since ``start``."""
    return tuple(now - then for now, then in zip(_clock(), start))


def _measure(run, n: int) -> tuple[tuple[float, float, float], list[float]]:
    start = _clock()
    latencies = run()
    return _since(start), latencies


def concurrent_row(base_url: str, c: int, delay_s: float, tokens: int) -> dict:
    n = max(40, 20 * c)
    requests = _requests(n, tokens)
    with _engine(base_url, c) as engine:
        list(engine.generate_many(requests[:c]))  # warm-up: connections opened, code paths hot

        def run():
            outcomes = list(engine.generate_many(requests))
            bad = [o for o in outcomes if o.error is not None]
            if bad:
                raise SystemExit(f"request failed: {bad[0].error}")
            return [o.result.latency_s for o in outcomes]
        times, lat = _measure(run, n)
    return _row(f"generate_many, concurrency {c}", c, n, times, lat, delay_s)


def sequential_row(base_url: str, delay_s: float, tokens: int) -> dict:
    n = 40
    requests = _requests(n, tokens)
    with _engine(base_url, 1) as engine:
        engine.generate(requests[0])

        def run():
            return [engine.generate(r).latency_s for r in requests]
        times, lat = _measure(run, n)
    return _row("sequential engine.generate loop", 1, n, times, lat, delay_s)


def _bare_body(tokens: int) -> dict:
    """The body of the bare clients' requests: the engine's prompt size, streamed."""
    return {"model": "bench", "messages": [{"role": "user", "content": "lorem ipsum " * 200}],
            "max_tokens": tokens, "stream": True}


def bare_httpx_row(base_url: str, delay_s: float, tokens: int) -> dict:
    n = 40
    body = _bare_body(tokens)
    with httpx.Client(timeout=30) as client:
        client.post(f"{base_url}/chat/completions", json=body).read()

        def run():
            out = []
            for _ in range(n):
                start = time.perf_counter()
                client.post(f"{base_url}/chat/completions", json=body).read()
                out.append(time.perf_counter() - start)
            return out
        times, lat = _measure(run, n)
    return _row("sequential bare httpx.Client loop", 1, n, times, lat, delay_s)


def bare_async_row(base_url: str, delay_s: float, tokens: int) -> dict:
    """httpx.AsyncClient reading the stream line by line: what the engine used before aiohttp."""
    n = 40
    body = _bare_body(tokens)

    async def one(client: httpx.AsyncClient) -> float:
        start = time.perf_counter()
        async with client.stream("POST", f"{base_url}/chat/completions", json=body) as r:
            async for _ in r.aiter_lines():
                pass
        return time.perf_counter() - start

    async def loop() -> tuple[tuple[float, float, float], list[float]]:
        async with httpx.AsyncClient(timeout=30) as client:
            await one(client)
            start = _clock()
            lat = [await one(client) for _ in range(n)]
            return _since(start), lat

    times, lat = asyncio.run(loop())
    return _row("sequential bare httpx.AsyncClient stream loop", 1, n, times, lat, delay_s)


def bare_aiohttp_row(base_url: str, delay_s: float, tokens: int, c: int = 1) -> dict:
    """aiohttp reading the stream line by line, ``c`` loops at once on one event loop: the
    floor under the engine's own cost at that concurrency."""
    rounds = 40 if c == 1 else 20
    body = _bare_body(tokens)

    async def one(session: aiohttp.ClientSession) -> float:
        start = time.perf_counter()
        async with session.post(f"{base_url}/chat/completions", json=body) as r:
            async for _ in r.content:
                pass
        return time.perf_counter() - start

    async def worker(session: aiohttp.ClientSession, k: int) -> list[float]:
        return [await one(session) for _ in range(k)]

    async def loop() -> tuple[tuple[float, float, float], list[float]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:
            await asyncio.gather(*(worker(session, 1) for _ in range(c)))
            start = _clock()
            per_worker = await asyncio.gather(*(worker(session, rounds) for _ in range(c)))
            return _since(start), [x for lat in per_worker for x in lat]

    times, lat = asyncio.run(loop())
    mode = ("sequential bare aiohttp stream loop" if c == 1 else
            f"bare aiohttp stream loops, concurrency {c}")
    return _row(mode, c, c * rounds, times, lat, delay_s)


def _row(mode: str, c: int, n: int, times: tuple[float, float, float], lat: list[float],
         delay_s: float) -> dict:
    wall, cpu, server_cpu = times
    ideal = c / delay_s
    return {"mode": mode, "c": c, "n": n, "rps": n / wall, "ideal": ideal,
            "pct": 100.0 * (n / wall) / ideal, "cpu_ms": 1000.0 * cpu / n,
            "server_ms": 1000.0 * server_cpu / n,
            "over_ms": 1000.0 * (statistics.median(lat) - delay_s)}


def table(rows: list[dict], delay_ms: float, tokens: int, gap_ms: float,
          load: tuple[float, ...]) -> str:
    sent = f"{gap_ms:g} ms apart" if gap_ms else "in one write"
    lines = [
        f"delay {delay_ms:g} ms, {tokens} streamed chunks per answer sent {sent}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} -> {os.getloadavg()[0]:.1f} (other processes compete for the CPUs), "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"httpx {httpx.__version__}",
        "",
        "| mode | in flight | requests | req/s | ideal c/delay | % of ideal | client CPU ms/req "
        "| server CPU ms/req | median latency − delay, ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['c']} | {r['n']} | {r['rps']:.1f} | {r['ideal']:.1f} | "
                     f"{r['pct']:.1f} | {r['cpu_ms']:.2f} | {r['server_ms']:.2f} | "
                     f"{r['over_ms']:.2f} |")
    return "\n".join(lines)


def one_delay(delay_ms: float, tokens: int, concurrency: list[int], gap_ms: float) -> None:
    global _server_pid
    load = os.getloadavg()
    server, base_url = _start_server(delay_ms, tokens, gap_ms)
    _server_pid = server.pid
    delay_s = delay_ms / 1000.0
    try:
        rows = [bare_httpx_row(base_url, delay_s, tokens),
                bare_async_row(base_url, delay_s, tokens),
                bare_aiohttp_row(base_url, delay_s, tokens),
                sequential_row(base_url, delay_s, tokens)]
        rows += [concurrent_row(base_url, c, delay_s, tokens) for c in concurrency]
        rows.append(bare_aiohttp_row(base_url, delay_s, tokens, max(concurrency)))
    finally:
        server.terminate()
        server.wait()
    text = table(rows, delay_ms, tokens, gap_ms, load)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    gap = f"_gap{gap_ms:g}ms" if gap_ms else ""
    out = RESULTS / f"client_throughput_{delay_ms:g}ms{gap}.md"
    out.write_text("# client_throughput\n\n`.venv/bin/python benchmarks/client_throughput.py "
                   f"--delay-ms {delay_ms:g} --tokens {tokens} --token-gap-ms {gap_ms:g}`"
                   f"\n\n{text}\n")
    print(f"\nwritten to {out}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[250.0, 50.0])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--token-gap-ms", type=float, default=0.0,
                        help="send the chunks this far apart (0: the whole answer in one write)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = parser.parse_args()
    for delay_ms in args.delay_ms:
        one_delay(delay_ms, args.tokens, args.concurrency, args.token_gap_ms)


if __name__ == "__main__":
    main()
