"""The ``openai`` engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, OpenAI).

The server applies the KV policy, either because each budget has its own server
(``engine.base_urls``) or because it reads ``kv_policy``/``kv_budget`` from the request body
(``engine.send_kv_params``). This engine only sends requests, times them and classifies failures
so the runner can retry transient ones and record the rest.

The request is split into build -> send -> parse so a later async/streaming client can replace
only ``_send`` (and measure a real time to first byte there).
"""

from __future__ import annotations

import email.utils
import json
import time
from datetime import datetime, timezone
from typing import Any

import httpx

from kv_transition.data.prompt import context_part, full_prompt, question_part
from kv_transition.engines.base import EngineError, GenerationRequest, GenerationResult
from kv_transition.engines.endpoints import api_key, configured_base_urls, resolve_base_url
from kv_transition.errors import BadInput
from kv_transition.settings import Settings

REACHABILITY_TIMEOUT_S = 5.0
TRANSIENT_STATUS = {408, 429}  # plus every 5xx
_REDACTED = "<redacted>"


class OpenAIEngine:
    name = "openai"

    def __init__(self, settings: Settings, tokenizer: Any = None):
        self._cfg = settings.engine
        self._model = settings.model.name
        self._tokenizer = tokenizer
        # Without a tokenizer, lengths (and so bins) are counted in whitespace words.
        self.token_unit = "tokens" if tokenizer is not None else "words"
        self._key = api_key(self._cfg)  # fails early (exit 2) when the variable is unset
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(self._cfg.request.timeout_s))

    # -- the Engine protocol -------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationResult:
        url = self._url(request)
        body = self._body(request)
        started = time.perf_counter()
        response = self._send(url, body)
        latency = time.perf_counter() - started
        payload = self._parse(url, response)
        return self._result(payload, latency)

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            return len(text.split())
        return len(self._tokenizer(text, add_special_tokens=False).input_ids)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "OpenAIEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- before a run ----------------------------------------------------------------------

    def check_reachable(self) -> None:
        """Raise ``BadInput`` if a configured server cannot be connected to at all.

        Any HTTP answer (even 401 or 404: some servers have no /models) proves the server is
        there; only transport failures mean the URL or the server is wrong.
        """
        for field, base in configured_base_urls(self._cfg):
            try:
                self._client.get(_join(base, "models"), timeout=REACHABILITY_TIMEOUT_S)
            except httpx.ReadTimeout:
                continue  # it accepted the connection; it is busy, not absent
            except (httpx.RequestError, httpx.InvalidURL) as exc:
                raise BadInput(
                    f"{field} {base}: unreachable ({type(exc).__name__}: "
                    f"{self._redact(str(exc))}); start the server or fix the URL") from None

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
        if self._cfg.send_kv_params:
            body["kv_policy"] = req.policy
            body["kv_budget"] = req.budget
        return body

    # -- send ------------------------------------------------------------------------------

    def _send(self, url: str, body: dict[str, Any]) -> httpx.Response:
        try:
            response = self._client.post(url, json=body)
        except httpx.TimeoutException as exc:
            raise EngineError(
                f"POST {url}: timed out after {self._cfg.request.timeout_s:g} s "
                f"({type(exc).__name__})", transient=True, kind="TIMEOUT") from None
        except httpx.RequestError as exc:
            # Refused connection, reset, server closed mid-answer: worth another try.
            raise EngineError(
                f"POST {url}: {type(exc).__name__}: {self._redact(str(exc))}",
                transient=True) from None
        if response.status_code >= 300:
            raise self._http_error(url, response)
        return response

    def _http_error(self, url: str, response: httpx.Response) -> EngineError:
        status = response.status_code
        message = self._redact(_server_message(response))
        transient = status in TRANSIENT_STATUS or status >= 500
        err = EngineError(f"POST {url}: HTTP {status}: {message}", transient=transient)
        err.retry_after = _retry_after_s(response.headers.get("Retry-After"))
        return err

    # -- parse -----------------------------------------------------------------------------

    def _parse(self, url: str, response: httpx.Response) -> dict[str, Any]:
        # A truncated or garbled body is usually a proxy or server hiccup: retry, then record.
        try:
            payload = response.json()
        except ValueError:
            snippet = self._redact(response.text[:200])
            raise EngineError(f"POST {url}: invalid JSON from server: {snippet!r}",
                              transient=True) from None
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise EngineError(f"POST {url}: invalid JSON from server: no choices in "
                              f"{self._redact(json.dumps(payload)[:200])}", transient=True)
        return self._scrub(payload)

    def _result(self, payload: dict[str, Any], latency: float) -> GenerationResult:
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        notes: dict[str, Any] = {"ttfb": "non-streaming: equals latency"}
        reason = choice.get("finish_reason")
        if reason not in ("stop", "length"):
            notes["server_finish_reason"] = reason  # e.g. None, "eos", "tool_calls"
        result = GenerationResult(
            text=_choice_text(choice),
            finish_reason="length" if reason == "length" else "stop",
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            latency_s=latency,
            ttfb_s=latency,
            raw=payload,
            notes=notes,
        )
        _add_server_timings(result, payload)
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


def _choice_text(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    if isinstance(message, dict):
        return message.get("content") or ""
    return choice.get("text") or ""


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _server_message(response: httpx.Response) -> str:
    """The error text as OpenAI, vLLM, llama.cpp or FastAPI servers phrase it."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
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


def _add_server_timings(result: GenerationResult, payload: dict[str, Any]) -> None:
    """Keep what the server measured: its prefill/decode split is more exact than ours."""
    metrics = payload.get("metrics")  # vLLM (when enabled)
    if isinstance(metrics, dict):
        result.notes["server_metrics"] = metrics
    timings = payload.get("timings")  # llama.cpp server
    if isinstance(timings, dict):
        result.notes["server_timings"] = timings
        prompt_ms, predicted_ms = timings.get("prompt_ms"), timings.get("predicted_ms")
        if isinstance(prompt_ms, (int, float)):
            result.prefill_s = prompt_ms / 1000.0
        if isinstance(predicted_ms, (int, float)):
            result.decode_s = predicted_ms / 1000.0
