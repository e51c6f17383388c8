"""The model worker: one thread owns the hf engine and answers queued requests one at a time.

``HFEngine`` is not thread-safe (one model, per-request attention switches and hooks, one CUDA
peak-memory counter), so requests never interleave on it: HTTP handlers enqueue a ``Job`` and
await its events, which the worker sends from its thread into the handler's event loop:

    ("token", text delta)*  then  ("done", Finished)  or  ("error", ApiError)

A handler that sees "error" first answers with that status; once a token is out, the response
is a 200 stream and a later error becomes an error event inside it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kv_transition.engines.base import EngineError, GenerationRequest, GenerationResult
from kv_transition.serve.prompting import PromptPlan
from kv_transition.serve.protocol import ApiError
from kv_transition.serve.streaming import TextDeltas

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """Raised inside generation when the client has disconnected: stop spending the model."""


@dataclass
class Job:
    plan: PromptPlan
    policy: str
    budget: float
    query_aware: bool
    max_tokens: int
    temperature: float
    seed: int
    prompt_param: str  # "messages" or "prompt", for error bodies
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)

    def emit(self, kind: str, value: Any = None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


@dataclass
class Finished:
    result: GenerationResult
    telemetry: dict[str, Any]
    tail: str  # text not yet sent as a token delta


class ModelWorker:
    def __init__(self, engine: Any, max_queue: int):
        self.engine = engine
        self.max_queue = max_queue
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._depth = 0  # waiting + running
        self._thread = threading.Thread(target=self._serve, name="kvt-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._depth

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._depth >= self.max_queue:
                raise ApiError(503, f"the server is busy: {self._depth} requests are queued "
                               f"(serve.max_queue {self.max_queue}); retry later",
                               code="server_busy", headers={"Retry-After": "1"})
            self._depth += 1
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    # -- the worker thread ---------------------------------------------------------------

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if job.cancelled.is_set():
                    continue  # its client left while it was queued
                self._answer(job)
            except ApiError as err:
                job.emit("error", err)
            except ClientGone:
                pass
            except Exception as exc:  # a bug must not kill the worker: answer 500, go on
                log.exception("request failed")
                job.emit("error", ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))
            finally:
                with self._lock:
                    self._depth -= 1

    def _answer(self, job: Job) -> None:
        queue_s = time.perf_counter() - job.enqueued
        request = _engine_request(job)
        n_prompt = self._check_length(job, request)
        deltas = TextDeltas(self.engine.tokenizer, self.engine.eos_ids)

        def on_token(token: int) -> None:
            if job.cancelled.is_set():
                raise ClientGone()
            delta = deltas.push(token)
            if delta:
                job.emit("token", delta)

        try:
            result = self.engine.generate(request, on_token=on_token)
        except EngineError as exc:
            raise ApiError(500, f"generation failed under {job.policy}@{job.budget:g}: "
                           f"{exc}", code="generation_failed") from None
        tail = deltas.finish(result.text)
        telemetry = _telemetry(job, result, queue_s, n_prompt)
        if deltas.sent != result.text:
            telemetry["stream_text_mismatch"] = True  # never seen; flagged rather than hidden
        job.emit("done", Finished(result, telemetry, tail))

    def _check_length(self, job: Job, request: GenerationRequest) -> int:
        context_ids, question_ids = self.engine.encode(request)
        n_prompt = int(context_ids.shape[1] + question_ids.shape[1])
        limit = getattr(self.engine, "max_positions", None)
        if limit and n_prompt + job.max_tokens > limit:
            raise ApiError(400, f"this model's maximum context length is {limit} tokens; the "
                           f"prompt has {n_prompt} tokens and max_tokens asks for "
                           f"{job.max_tokens} more", param=job.prompt_param,
                           code="context_length_exceeded")
        return n_prompt


def _engine_request(job: Job) -> GenerationRequest:
    project = job.plan.project
    return GenerationRequest(
        context=project.context if project else "", question=project.question if project else "",
        answer_prefix=project.answer_prefix if project else "", max_tokens=job.max_tokens,
        temperature=job.temperature, policy=job.policy, budget=job.budget,
        query_aware=job.query_aware, seed=job.seed,
        # free text: all of it is the compressed prefill, nothing is held back as a question
        raw_prompt=None if project else job.plan.text)


def _telemetry(job: Job, result: GenerationResult, queue_s: float,
               n_prompt: int) -> dict[str, Any]:
    """What the server measured and applied; clients store it (kv_telemetry)."""
    return {
        **result.notes,
        "policy": job.policy, "budget": job.budget, "applied": result.raw.get("applied"),
        "query_aware": job.query_aware, "prompt_format": job.plan.kind,
        "queue_s": queue_s, "ttft_s": result.ttfb_s, "prefill_s": result.prefill_s,
        "decode_s": result.decode_s, "latency_s": result.latency_s,
        "peak_mem_mb": result.peak_mem_mb, "kv_bytes": result.kv_bytes,
        "prompt_tokens": n_prompt, "token_ids": result.raw.get("token_ids"),
    }
