"""The ``openai`` engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, OpenAI, or
``kv-transition serve``).

The server applies the KV policy, either because each setting has its own server
(``engine.base_urls``) or because it reads ``kv_policy``/``kv_budget`` from the request body
(``engine.send_kv_params``). This engine sends requests over aiohttp with at most
``engine.concurrency`` in flight, streams answers by default (time to first token, inter-token
times, usage from the final chunk) and keeps what the server says about itself.

Why aiohttp and not httpx: a sweep's client must cost far less than the server's answer, and on
a 2-core machine a bare httpx.AsyncClient streaming loop alone costs 2.4-2.7 ms of CPU per
request, against about 1 ms for aiohttp with its C HTTP parser (benchmarks/client_throughput.py
has both rows). With many requests in flight, the client's CPU is what caps throughput.

Retry rule: an attempt is retried only while no answer data has arrived: connect errors,
timeouts before the answer began, 408, 429 (honouring Retry-After) and 5xx. Once the server has
started answering (a ``data:`` event of a stream, a byte of a 200 body) a failure is recorded as
it is: a stream cut after tokens is this request's outcome, and a silent retry would hide it and
time a different attempt.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import queue
import secrets
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

import aiohttp

from kv_transition.data.prompt import context_part, full_prompt, question_part
from kv_transition.engines.base import (EngineError, GenerationRequest, GenerationResult,
                                         median_or_none)
from kv_transition.engines.endpoints import api_key, configured_base_urls, resolve_base_url
from kv_transition.engines.openai_stream import MalformedChunk, StreamAssembly
from kv_transition.engines.sse import DONE, LineSplitter, SSEDecoder
from kv_transition.errors import BadInput
from kv_transition.engines.retries import acall_with_retries
from kv_transition.settings import Settings

REACHABILITY_TIMEOUT_S = 5.0
TRANSIENT_STATUS = {408, 429}  # plus every 5xx
MAX_INTER_TOKEN_TIMES = 4096  # stored per request; longer answers keep the summary only
_REDACTED = "<redacted>"


@dataclass
class RequestOutcome:
    """What became of ``requests[index]`` in ``generate_many``: a result or the final error."""

    index: int
    result: GenerationResult | None
    error: EngineError | None
    attempts: int
    seconds: float


@dataclass
class _Attempt:
    started: float
    answered: bool = False  # answer data arrived: from here on, failures are not retried
    first_data: float | None = None
    assembly: StreamAssembly | None = None

    def mark(self, now: float) -> None:
        if not self.answered:
            self.answered, self.first_data = True, now


class OpenAIEngine:
    name = "openai"

    def __init__(self, settings: Settings, tokenizer: Any = None):
        self._cfg = settings.engine
        self._model = settings.model.name
        self._tokenizer = tokenizer
        # Without a tokenizer, lengths (and so bins) are counted in whitespace words.
        self.token_unit = "tokens" if tokenizer is not None else "words"
        self._key = api_key(self._cfg)  # fails early (exit 2) when the variable is unset
        self.concurrency = self._cfg.concurrency
        self._timeout = self._cfg.request.timeout_s
        # identity: a compressed stream sits in the decompressor, which would blur token times
        self._headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self._key:
            self._headers["Authorization"] = f"Bearer {self._key}"
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str | None] = {}
        # One event loop per engine: the sync entry points run it in the caller's thread,
        # generate_many in a helper thread; never both at once.
        self._loop = asyncio.new_event_loop()

    # -- the Engine protocol -------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """One attempt, no retries (the caller retries transient errors)."""
        return self._loop.run_until_complete(self.agenerate(request))

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            return len(text.split())
        return len(self._tokenizer(text, add_special_tokens=False).input_ids)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._session is not None:
            self._loop.run_until_complete(self._session.close())
        self._loop.close()

    def _client(self) -> aiohttp.ClientSession:
        """The engine's one session, made on first use from inside its loop (aiohttp ties a
        session to the loop running when it is made). Its pool holds one keep-alive
        connection per request in flight."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0)
            # trust_env=False: aiohttp would look up netrc and the proxy on a thread for every
            # request; _proxy() reads the same environment once per URL instead.
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout))
        return self._session

    def _proxy(self, url: str) -> str | None:
        """The proxy that HTTP_PROXY/HTTPS_PROXY/NO_PROXY name for ``url``, as curl reads them."""
        if url not in self._proxies:
            parts = urllib.parse.urlsplit(url)
            bypass = urllib.request.proxy_bypass(parts.hostname or "")
            self._proxies[url] = None if bypass else urllib.request.getproxies().get(parts.scheme)
        return self._proxies[url]

    def __enter__(self) -> "OpenAIEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- many requests at once -------------------------------------------------------------

    def generate_many(self, requests: Sequence[GenerationRequest]) -> Iterator[RequestOutcome]:
        """Answer every request, retries included, with at most ``concurrency`` in flight.

        Yields one outcome per request as it completes, in completion order, so the caller can
        commit each answer at once. The requests run on a helper thread, so their timings are
        taken as bytes arrive even while the caller is busy writing. Closing the iterator (an
        error or Ctrl-C in the caller) cancels what is still in flight.
        """
        if not requests:
            return
        outcomes: queue.Queue = queue.Queue()
        task = self._loop.create_task(self._answer_all(requests, outcomes))
        thread = threading.Thread(target=self._drive, args=(task, outcomes), daemon=True)
        thread.start()
        try:
            for _ in range(len(requests)):
                item = outcomes.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._loop.call_soon_threadsafe(task.cancel)
            thread.join()

    def _drive(self, task: asyncio.Task, outcomes: queue.Queue) -> None:
        try:
            self._loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # a bug: hand it to the caller instead of hanging it
            outcomes.put(exc)

    async def _answer_all(self, requests: Sequence[GenerationRequest],
                          outcomes: queue.Queue) -> None:
        todo = deque(range(len(requests)))

        async def worker() -> None:
            while todo:
                index = todo.popleft()
                outcomes.put(await self._answer(index, requests[index]))

        workers = [asyncio.create_task(worker())
                   for _ in range(min(self.concurrency, len(requests)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    async def _answer(self, index: int, request: GenerationRequest) -> RequestOutcome:
        req = self._cfg.request
        start = time.perf_counter()
        try:
            result, attempts = await acall_with_retries(
                lambda: self.agenerate(request), max_retries=req.max_retries,
                backoff_s=req.backoff_s)
            return RequestOutcome(index, result, None, attempts, time.perf_counter() - start)
        except EngineError as err:
            return RequestOutcome(index, None, err, getattr(err, "attempts", 1),
                                  time.perf_counter() - start)

    # -- one attempt ---------------------------------------------------------------------

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        """One attempt under the per-request deadline; raises ``EngineError``."""
        url, body = self._url(request), json.dumps(self._body(request)).encode()
        session = self._client()
        attempt = _Attempt(time.perf_counter())
        try:
            async with asyncio.timeout(self._timeout):
                if self._cfg.stream:
                    return await self._streamed(session, url, body, attempt)
                return await self._whole(session, url, body, attempt)
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            if attempt.assembly is not None and attempt.assembly.done:
                # the answer ended ([DONE]) but the server kept the connection open
                return self._stream_result(attempt, time.perf_counter() - attempt.started)
            raise self._timeout_error(url, attempt, exc) from None
        except aiohttp.ClientError as exc:
            if attempt.assembly is not None and attempt.assembly.done:
                return self._stream_result(attempt, time.perf_counter() - attempt.started)
            # refused, reset, closed mid-answer: worth another try only if nothing came yet
            raise EngineError(
                f"POST {url}: {type(exc).__name__}: {self._redact(str(exc))}"
                f"{_after(attempt)}", transient=not attempt.answered) from None

    async def _streamed(self, session: aiohttp.ClientSession, url: str, body: bytes,
                        attempt: _Attempt) -> GenerationResult:
        async with session.post(url, data=body, proxy=self._proxy(url),
                                allow_redirects=False) as response:
            await self._check_status(url, response)
            attempt.assembly = StreamAssembly(attempt.started)
            decoder, lines = SSEDecoder(), LineSplitter()
            async for data in response.content.iter_any():
                self._on_lines(url, lines.feed(data), decoder, attempt)
            self._on_lines(url, lines.flush(), decoder, attempt)
            event = decoder.flush()  # a last event without its blank line
            if event is not None:
                self._on_event(url, event.data, event.event, attempt, time.perf_counter())
        assembly = attempt.assembly
        if not assembly.complete:
            raise EngineError(
                f"POST {url}: the stream ended without a finish_reason or [DONE] after "
                f"{assembly.n_chunks} chunks ({len(assembly.text)} characters): cut midway",
                transient=not attempt.answered)
        return self._stream_result(attempt, time.perf_counter() - attempt.started)

    def _on_lines(self, url: str, lines: list[str], decoder: SSEDecoder,
                  attempt: _Attempt) -> None:
        now = time.perf_counter()  # the lines of one read arrived together
        feed = decoder.feed
        for line in lines:
            event = feed(line)
            if event is not None:
                self._on_event(url, event.data, event.event, attempt, now)

    def _on_event(self, url: str, data: str, event: str, attempt: _Attempt, now: float) -> None:
        attempt.mark(now)
        assembly = attempt.assembly
        if data == DONE or data.strip() == DONE:
            assembly.done = True
            return
        if assembly.done:
            return  # nothing after the sentinel belongs to the answer
        try:
            chunk = json.loads(data)
        except ValueError:
            raise EngineError(f"POST {url}: invalid JSON in the stream after {assembly.n_chunks} "
                              f"chunks: {self._redact(data[:200])!r}", transient=False) from None
        if event == "error" or (isinstance(chunk, dict) and "error" in chunk):
            message = _error_message(chunk.get("error") if isinstance(chunk, dict) else chunk)
            raise EngineError(f"POST {url}: the server reported an error mid-stream after "
                              f"{assembly.n_chunks} chunks: {self._redact(message)}",
                              transient=False)
        try:
            assembly.add(chunk, now)
        except MalformedChunk as exc:
            raise EngineError(f"POST {url}: invalid JSON from server: malformed stream chunk "
                              f"({exc})", transient=False) from None

    async def _whole(self, session: aiohttp.ClientSession, url: str, body: bytes,
                     attempt: _Attempt) -> GenerationResult:
        async with session.post(url, data=body, proxy=self._proxy(url),
                                allow_redirects=False) as response:
            await self._check_status(url, response)
            parts = []
            async for part in response.content.iter_any():
                attempt.mark(time.perf_counter())
                parts.append(part)
        latency = time.perf_counter() - attempt.started
        payload = self._parse(url, b"".join(parts), attempt)
        return self._whole_result(payload, latency, attempt)

    async def _check_status(self, url: str, response: aiohttp.ClientResponse) -> None:
        if response.status < 300:
            return
        raise self._http_error(url, response, await response.read())

    # -- before a run ----------------------------------------------------------------------

    def warmup(self, policy: str, budget: float) -> None:
        """One untimed request per setting: the server's lazy init (CUDA graphs, imports, the
        first compression) stays off the first recorded latency, as for the hf engine."""
        filler = " ".join(["the"] * 64)
        request = GenerationRequest(context=filler, question="the", max_tokens=2,
                                    policy=policy, budget=budget)
        try:
            self.generate(request)
        except EngineError:
            pass  # the real requests will record whatever is wrong

    def check_reachable(self) -> None:
        """Raise ``BadInput`` if a configured server cannot be connected to at all.

        Any HTTP answer (even 401 or 404: some servers have no /models) proves the server is
        there; only transport failures mean the URL or the server is wrong.
        """
        for field, base in configured_base_urls(self._cfg):
            try:
                self._loop.run_until_complete(self._probe(_join(base, "models")))
            except aiohttp.SocketTimeoutError:
                continue  # it accepted the connection; it is busy, not absent
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise BadInput(
                    f"{field} {base}: unreachable ({type(exc).__name__}: "
                    f"{self._redact(str(exc))}); start the server or fix the URL") from None

    async def _probe(self, url: str) -> None:
        timeout = aiohttp.ClientTimeout(sock_connect=REACHABILITY_TIMEOUT_S,
                                        sock_read=REACHABILITY_TIMEOUT_S)
        async with self._client().get(url, timeout=timeout, proxy=self._proxy(url)) as response:
            await response.read()

    # -- build -----------------------------------------------------------------------------

    def _url(self, req: GenerationRequest) -> str:
        base = resolve_base_url(self._cfg, req.policy, req.budget)
        return _join(base, "chat/completions" if self._cfg.endpoint == "chat" else "completions")

    def _body(self, req: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "seed": req.seed,
        }
        if self._cfg.endpoint == "chat":
            content = context_part(req.context) + question_part(req.question, req.answer_prefix)
            body["messages"] = [{"role": "user", "content": content}]
        else:
            body["prompt"] = full_prompt(req.context, req.question, req.answer_prefix)
        if self._cfg.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # usage arrives in the last chunk
        if self._cfg.send_kv_params:
            body["kv_policy"] = req.policy
            body["kv_budget"] = req.budget
            body["kv_query_aware"] = req.query_aware
        if self._cfg.cache_bust == "cache_salt":
            body["cache_salt"] = secrets.token_hex(8)  # a fresh salt: no prefix-cache hit
        elif self._cfg.cache_bust == "cache_prompt":
            body["cache_prompt"] = False
        return body

    # -- errors ----------------------------------------------------------------------------

    def _http_error(self, url: str, response: aiohttp.ClientResponse,
                    data: bytes) -> EngineError:
        status = response.status
        message = self._redact(_server_message(data, response.reason))
        location = response.headers.get("Location")
        if 300 <= status < 400 and location:
            # not followed: a redirected POST may come back as a GET, and the URL is the fix
            message = f"redirected to {location}: point the base URL there ({message})"
        transient = status in TRANSIENT_STATUS or status >= 500
        err = EngineError(f"POST {url}: HTTP {status}: {message}", transient=transient)
        err.retry_after = _retry_after_s(response.headers.get("Retry-After"))
        return err

    def _timeout_error(self, url: str, attempt: _Attempt, exc: BaseException) -> EngineError:
        what = type(exc).__name__ if isinstance(exc, aiohttp.ServerTimeoutError) else "deadline"
        return EngineError(
            f"POST {url}: no complete answer within {self._timeout:g} s ({what})"
            f"{_after(attempt)}", transient=not attempt.answered, kind="TIMEOUT")

    # -- parse -----------------------------------------------------------------------------

    def _parse(self, url: str, data: bytes, attempt: _Attempt) -> dict[str, Any]:
        try:
            payload = json.loads(data)
        except ValueError:
            snippet = self._redact(data[:200].decode(errors="replace"))
            raise EngineError(f"POST {url}: invalid JSON from server: {snippet!r}",
                              transient=not attempt.answered) from None
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise EngineError(f"POST {url}: invalid JSON from server: no choices in "
                              f"{self._redact(json.dumps(payload)[:200])}",
                              transient=not attempt.answered)
        return self._scrub(payload)

    def _whole_result(self, payload: dict[str, Any], latency: float,
                      attempt: _Attempt) -> GenerationResult:
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        notes: dict[str, Any] = {"stream": False,
                                 "ttfb": "non-streaming: the first byte of the whole answer"}
        reason = choice.get("finish_reason")
        if reason not in ("stop", "length"):
            notes["server_finish_reason"] = reason  # e.g. None, "eos", "tool_calls"
        result = GenerationResult(
            text=_choice_text(choice),
            finish_reason="length" if reason == "length" else "stop",
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            latency_s=latency,
            ttfb_s=(attempt.first_data or time.perf_counter()) - attempt.started,
            raw=payload,
            notes=notes,
        )
        _add_server_reports(result, payload)
        return result

    def _stream_result(self, attempt: _Attempt, latency: float) -> GenerationResult:
        assembly = attempt.assembly
        chat = self._cfg.endpoint == "chat"
        gaps = assembly.inter_token_s()
        ttft = assembly.ttft_s()
        notes: dict[str, Any] = {
            "stream": True, "ttft_s": ttft, "n_chunks": assembly.n_chunks,
            "inter_token_s": [round(g, 6) for g in gaps[:MAX_INTER_TOKEN_TIMES]],
            "inter_token_median_s": median_or_none(gaps), "inter_token_max_s": max(gaps, default=None)}
        if len(gaps) > MAX_INTER_TOKEN_TIMES:
            notes["inter_token_s_truncated"] = len(gaps)
        reason = assembly.finish_reason
        if reason not in ("stop", "length"):
            notes["server_finish_reason"] = reason
        usage = assembly.usage or {}
        if not usage:
            notes["usage"] = "the server sent no usage chunk"
        first = ttft if ttft is not None else (attempt.first_data or 0.0) - attempt.started
        payload = self._scrub(assembly.payload(chat))
        result = GenerationResult(
            text=self._redact(assembly.text),
            finish_reason="length" if reason == "length" else "stop",
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            latency_s=latency, ttfb_s=first, raw=payload, notes=notes)
        _add_server_reports(result, payload)
        return result

    # -- secrets ---------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        # A server (or proxy) may echo request headers; the key must not reach logs or the DB.
        return text.replace(self._key, _REDACTED) if self._key else text

    def _scrub(self, value: Any) -> Any:
        if not self._key:
            return value
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, dict):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._scrub(v) for v in value]
        return value


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path


def _after(attempt: _Attempt) -> str:
    if not attempt.answered:
        return ""
    n = attempt.assembly.n_chunks if attempt.assembly is not None else 0
    return f" (after the answer began, {n} chunks in: not retried)"


def _choice_text(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    if isinstance(message, dict):
        return message.get("content") or ""
    return choice.get("text") or ""


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _error_message(error: Any) -> str:
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return json.dumps(error)[:500]


def _server_message(data: bytes, reason: str | None) -> str:
    """The error text as OpenAI, vLLM, llama.cpp or FastAPI servers phrase it."""
    try:
        body = json.loads(data)
    except ValueError:
        return data[:500].decode("utf-8", "replace") or (reason or "")
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return json.dumps(body)[:500]


def _retry_after_s(header: str | None) -> float | None:
    """Retry-After as seconds; it may be a number or an HTTP date (RFC 9110)."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _add_server_reports(result: GenerationResult, payload: dict[str, Any]) -> None:
    """Keep what the server measured: its prefill/decode split is more exact than ours."""
    metrics = payload.get("metrics")  # vLLM (when enabled)
    if isinstance(metrics, dict):
        result.notes["server_metrics"] = metrics
    timings = payload.get("timings")  # llama.cpp server
    if isinstance(timings, dict):
        result.notes["server_timings"] = timings
        prompt_ms, predicted_ms = _number(timings.get("prompt_ms")), \
            _number(timings.get("predicted_ms"))
        if prompt_ms is not None:
            result.prefill_s = prompt_ms / 1000.0
        if predicted_ms is not None:
            result.decode_s = predicted_ms / 1000.0
    telemetry = payload.get("kv_telemetry")  # kv-transition serve
    if isinstance(telemetry, dict):
        result.notes["server_telemetry"] = telemetry
        result.prefill_s = _number(telemetry.get("prefill_s"))
        result.decode_s = _number(telemetry.get("decode_s"))
        result.peak_mem_mb = _number(telemetry.get("peak_mem_mb"))
        kv_bytes = telemetry.get("kv_bytes")
        result.kv_bytes = kv_bytes if _int_or_none(kv_bytes) is not None else None
