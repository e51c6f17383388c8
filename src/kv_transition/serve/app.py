"""The HTTP routes: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health
and /metrics.

Every failure a client can cause is answered with an OpenAI-style error body and the status
OpenAI uses (400 bad request, 401 missing token, 404 unknown model, 413 body too large, 503
queue full); the route never reaches the model before the request is known to be valid.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from kv_transition.serve.metrics import CONTENT_TYPE, ServerMetrics
from kv_transition.serve.options import ServeOptions, request_kv
from kv_transition.serve.prompting import plan_chat, plan_completion
from kv_transition.serve.protocol import (ApiError, ChatBody, CompletionBody, answer_body,
                                          chunk_body, completion_id, parse_body, usage_body)
from kv_transition.serve.worker import Finished, Job, ModelWorker
from kv_transition.settings import DecodingConfig


@dataclass
class ServerState:
    model_id: str
    options: ServeOptions
    worker: ModelWorker
    metrics: ServerMetrics
    decoding: DecodingConfig  # defaults for fields a request leaves out
    query_aware: bool
    use_chat_template: bool
    created: int = 0


def create_app(state: ServerState) -> Starlette:
    async def chat(request: Request) -> Response:
        return await _generate(state, request, chat=True)

    async def completions(request: Request) -> Response:
        return await _generate(state, request, chat=False)

    async def models(request: Request) -> Response:
        _authorize(state, request)
        return _json(200, {"object": "list", "data": [
            {"id": state.model_id, "object": "model", "created": state.created,
             "owned_by": "kv-transition"}]})

    async def health(request: Request) -> Response:
        return _json(200, {"status": "ok", "model": state.model_id,
                           "queue_depth": state.worker.depth})

    async def metrics(request: Request) -> Response:
        _authorize(state, request)
        return Response(state.metrics.render(state.worker.depth), media_type=CONTENT_TYPE)

    routes = [Route("/v1/chat/completions", _guarded(chat), methods=["POST"]),
              Route("/v1/completions", _guarded(completions), methods=["POST"]),
              Route("/v1/models", _guarded(models), methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", _guarded(metrics), methods=["GET"])]
    return Starlette(routes=routes)


def _guarded(endpoint):
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as err:
            return _error(err)
    return wrapped


# -- one generation request -------------------------------------------------------------------

async def _generate(state: ServerState, request: Request, chat: bool) -> Response:
    name = "chat" if chat else "completions"
    started = time.perf_counter()
    state.metrics.started()
    status, streaming = 500, False
    try:
        _authorize(state, request)
        body = parse_body(ChatBody if chat else CompletionBody,
                          await _read_json(request, state.options.max_body_bytes))
        job = _job(state, body, chat)
        state.worker.submit(job)
        first = await _next_event(job)
        if first[0] == "error":
            raise first[1]
        ident = completion_id(chat)
        status = 200
        if body.stream:
            streaming = True
            events = _sse(state, job, first, chat, ident, body.include_usage(), started, name)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _whole_answer(state, job, first, chat, ident)
    except ApiError as err:
        status = err.status
        return _error(err)
    finally:
        if not streaming:  # a stream records itself when it ends
            state.metrics.finished(name, status, time.perf_counter() - started)


def _job(state: ServerState, body: ChatBody | CompletionBody, chat: bool) -> Job:
    if body.model != state.model_id:
        raise ApiError(404, f"model {body.model!r} is not served here; this server serves "
                       f"{state.model_id!r}", param="model", code="model_not_found")
    policy, budget = request_kv(state.options, body.kv_policy, body.kv_budget)
    plan = plan_chat(body, state.worker.engine.tokenizer, state.use_chat_template) if chat \
        else plan_completion(body)
    dec = state.decoding
    return Job(plan=plan, policy=policy, budget=budget,
               query_aware=state.query_aware if body.kv_query_aware is None
               else body.kv_query_aware,
               max_tokens=body.wanted_tokens() or dec.max_tokens,
               temperature=dec.temperature if body.temperature is None else body.temperature,
               seed=dec.seed if body.seed is None else body.seed,
               prompt_param="messages" if chat else "prompt", loop=asyncio.get_running_loop())


async def _next_event(job: Job) -> tuple[str, Any]:
    try:
        return await job.events.get()
    except asyncio.CancelledError:
        job.cancelled.set()  # the client left: stop the model working for nobody
        raise


async def _whole_answer(state: ServerState, job: Job, event: tuple[str, Any], chat: bool,
                        ident: str) -> Response:
    while event[0] == "token":
        event = await _next_event(job)
    if event[0] == "error":
        raise event[1]
    done: Finished = event[1]
    result = done.result
    usage = usage_body(done.telemetry["prompt_tokens"], result.completion_tokens or 0)
    state.metrics.generated(done.telemetry, result.completion_tokens or 0)
    return _json(200, answer_body(chat, ident, state.model_id, result.text, result.finish_reason,
                                  usage, done.telemetry))


async def _sse(state: ServerState, job: Job, event: tuple[str, Any], chat: bool, ident: str,
               include_usage: bool, started: float, name: str) -> AsyncIterator[bytes]:
    model, status = state.model_id, 200
    try:
        if chat:  # OpenAI opens a chat stream with the role
            yield _event(chunk_body(chat, ident, model, "", first=True))
        while event[0] == "token":
            yield _event(chunk_body(chat, ident, model, event[1]))
            event = await _next_event(job)
        if event[0] == "error":
            status = event[1].status
            yield _event(event[1].body())  # no [DONE]: the client must see the answer failed
            return
        done: Finished = event[1]
        result = done.result
        if done.tail:
            yield _event(chunk_body(chat, ident, model, done.tail))
        final = chunk_body(chat, ident, model, None, finish=result.finish_reason)
        final["kv_telemetry"] = done.telemetry
        yield _event(final)
        if include_usage:
            usage = usage_body(done.telemetry["prompt_tokens"], result.completion_tokens or 0)
            yield _event({"id": ident, "object": final["object"], "created": final["created"],
                          "model": model, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
        state.metrics.generated(done.telemetry, result.completion_tokens or 0)
    finally:
        job.cancelled.set()  # harmless when done; stops generation if the client went away
        state.metrics.finished(name, status, time.perf_counter() - started)


# -- plumbing -----------------------------------------------------------------------------------

def _authorize(state: ServerState, request: Request) -> None:
    expected = state.options.api_key
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                             expected.encode()):
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <key>)",
                       type_="authentication_error", code="invalid_api_key")


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length", "")
    too_big = ApiError(413, f"the request body exceeds the server's limit of {limit} bytes "
                       "(serve.max_body_mb)", code="request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_big
        parts.append(part)
    try:
        return json.loads(b"".join(parts))
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None


def _dumps(payload: Any) -> str:
    # engine notes may hold numpy or torch scalars; numbers stay numbers, the rest becomes text
    return json.dumps(payload, default=lambda v: v.item() if hasattr(v, "item") else str(v))


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(payload), status_code=status, media_type="application/json",
                    headers=headers)


def _error(err: ApiError) -> Response:
    return _json(err.status, err.body(), err.headers)


def _event(payload: Any) -> bytes:
    return f"data: {_dumps(payload)}\n\n".encode()
