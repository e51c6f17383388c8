"""The openai engine against a real HTTP server on loopback (see fake_openai_server.py)."""

from __future__ import annotations

import email.utils
import json
import random
import socket
from datetime import datetime, timedelta, timezone

import pytest

from kv_transition.data.prompt import context_part, full_prompt, question_part
from kv_transition.engines.base import EngineError, GenerationRequest
from kv_transition.engines.endpoints import api_key, resolve_base_url
from kv_transition.engines.openai_compat import OpenAIEngine
from kv_transition.errors import BadInput
from kv_transition.engines.retries import call_with_retries
from kv_transition.settings import EngineConfig, Settings

try:  # tests/ may or may not become a package; the helper sits next to this file either way
    from .fake_openai_server import USAGE, FakeOpenAIServer, Reply, error
except ImportError:
    from fake_openai_server import USAGE, FakeOpenAIServer, Reply, error

KEY_ENV = "KVT_TEST_OPENAI_KEY"
SECRET = "sk-test-5ecret-value-0123"


@pytest.fixture
def server():
    srv = FakeOpenAIServer().start()
    yield srv
    srv.stop()


def make_settings(base_url: str | None, **engine) -> Settings:
    engine = {"kind": "openai", "base_url": base_url, **engine}
    return Settings.model_validate({"engine": engine, "model": {"name": "fake-model"}})


def make_engine(base_url, **engine) -> OpenAIEngine:
    return OpenAIEngine(make_settings(base_url, **engine))


REQ = GenerationRequest(context="Paris is the capital of France.", question="Capital of France?",
                        max_tokens=8, temperature=0.0, policy="snapkv", budget=0.5,
                        answer_prefix="The answer is", seed=7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- happy paths --------------------------------------------------------------------------

def test_chat_request_and_result_without_streaming(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with make_engine(server.base_url, api_key_env=KEY_ENV, send_kv_params=True,
                     stream=False) as engine:
        result = engine.generate(REQ)
    (seen,) = server.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    content = context_part(REQ.context) + question_part(REQ.question, REQ.answer_prefix)
    assert seen.body == {
        "model": "fake-model", "max_tokens": 8, "temperature": 0.0, "seed": 7,
        "messages": [{"role": "user", "content": content}],
        "kv_policy": "snapkv", "kv_budget": 0.5, "kv_query_aware": False,
    }
    assert (result.text, result.finish_reason) == ("Paris", "stop")
    assert (result.prompt_tokens, result.completion_tokens) == (42, 3)
    assert 0 < result.ttfb_s <= result.latency_s and result.notes["stream"] is False
    assert result.raw["choices"][0]["message"]["content"] == "Paris"


def test_streamed_chat_times_every_token_and_takes_usage_from_the_last_chunk(server):
    server.script.append(Reply(text="Paris is big", chunk_delay_s=0.05, pings=True))
    with make_engine(server.base_url) as engine:
        result = engine.generate(REQ)
    body = server.seen[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (result.text, result.finish_reason) == ("Paris is big", "stop")
    assert (result.prompt_tokens, result.completion_tokens) == (USAGE["prompt_tokens"],
                                                                USAGE["completion_tokens"])
    notes = result.notes
    # the role-only chunk and the pings carry no text: three text chunks, two gaps
    assert len(notes["inter_token_s"]) == 2 and min(notes["inter_token_s"]) >= 0.04
    assert 0 < notes["ttft_s"] == result.ttfb_s < result.latency_s
    assert result.raw["choices"][0]["message"]["content"] == "Paris is big"
    assert result.raw["stream"]["done_sentinel"] is True


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
def test_a_stream_split_into_tiny_reads_is_put_back_together(server, line_end):
    # 5-byte pieces end reads inside "data:", inside CRLF pairs and inside UTF-8 characters
    server.script.append(Reply(text="Zürich — 東京", line_end=line_end, fragment=5))
    with make_engine(server.base_url) as engine:
        result = engine.generate(REQ)
    assert (result.text, result.finish_reason) == ("Zürich — 東京", "stop")
    assert result.completion_tokens == USAGE["completion_tokens"]
    assert result.raw["stream"] == {"chunks": 4, "done_sentinel": True}


def test_a_last_event_without_its_blank_line_still_counts(server):
    # the stream ends right after the finish chunk's line: no blank line, no usage, no [DONE]
    server.script.append(Reply(text="Paris", usage_chunk=False, done=False,
                               blank_after_last=False))
    with make_engine(server.base_url) as engine:
        result = engine.generate(REQ)
    assert (result.text, result.finish_reason) == ("Paris", "stop")
    assert result.raw["stream"] == {"chunks": 1, "done_sentinel": False}


def test_proxy_from_the_environment_and_no_proxy(server, monkeypatch):
    # the fake server is the proxy here: it sees the absolute URL of the real target
    proxy = server.base_url.removesuffix("/v1")
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with make_engine("http://upstream.invalid:9/v1") as engine:
        assert engine.generate(REQ).text == "Paris"
    assert server.seen[0].path == "http://upstream.invalid:9/v1/chat/completions"
    monkeypatch.setenv("NO_PROXY", "upstream.invalid")
    with make_engine("http://upstream.invalid:9/v1") as engine, \
            pytest.raises(EngineError) as info:
        engine.generate(REQ)  # straight to a host that does not exist
    assert info.value.transient and len(server.seen) == 1


def test_streamed_completions_without_usage_or_done(server):
    server.script.append(Reply(text="Paris and", finish_reason="length", usage_chunk=False,
                               done=False))
    with make_engine(server.base_url + "/", endpoint="completions") as engine:
        result = engine.generate(REQ)
    (seen,) = server.seen
    assert seen.path == "/v1/completions"  # the trailing slash of the base URL is tolerated
    assert "authorization" not in seen.headers
    assert seen.body["prompt"] == full_prompt(REQ.context, REQ.question, REQ.answer_prefix)
    assert "kv_policy" not in seen.body and "messages" not in seen.body
    assert (result.text, result.finish_reason) == ("Paris and", "length")
    assert result.completion_tokens is None and "no usage" in result.notes["usage"]


def test_done_without_finish_reason_is_a_complete_answer(server):
    server.script.append(Reply(text="Paris", finish_reason=None))
    with make_engine(server.base_url) as engine:
        result = engine.generate(REQ)
    assert result.finish_reason == "stop" and result.notes["server_finish_reason"] is None


def test_server_reports_are_kept_raw_and_in_telemetry(server):
    timings = {"prompt_n": 42, "prompt_ms": 120.0, "predicted_n": 3, "predicted_ms": 30.0}
    own = {"prefill_s": 0.5, "decode_s": 0.25, "peak_mem_mb": 100.0, "kv_bytes": 4096,
           "applied": {"policy": "snapkv"}}
    server.script += [Reply(extra={"timings": timings}),
                      Reply(extra={"kv_telemetry": own, "metrics": {"arrival_time": 1.0}})]
    with make_engine(server.base_url) as engine:
        llama, ours = engine.generate(REQ), engine.generate(REQ)
    assert llama.notes["server_timings"] == timings == llama.raw["timings"]
    assert (llama.prefill_s, llama.decode_s) == pytest.approx((0.12, 0.03))
    assert ours.notes["server_telemetry"] == own and ours.notes["server_metrics"]
    assert (ours.prefill_s, ours.decode_s, ours.peak_mem_mb, ours.kv_bytes) == \
        (0.5, 0.25, 100.0, 4096)


def test_base_url_per_budget_routes_requests():
    a, b = FakeOpenAIServer().start(), FakeOpenAIServer().start()
    try:
        engine = make_engine(None, base_urls={"snapkv@0.50": a.base_url, "1": b.base_url})
        with engine:
            engine.generate(REQ)
            engine.generate(GenerationRequest("c", "q", 4, policy="full", budget=1.0))
        assert len(a.seen) == 1 and len(b.seen) == 1
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("mode, field, same", [("cache_salt", "cache_salt", False),
                                               ("cache_prompt", "cache_prompt", True)])
def test_cache_busting(server, mode, field, same):
    with make_engine(server.base_url, cache_bust=mode) as engine:
        engine.generate(REQ)
        engine.generate(REQ)
    first, second = (s.body[field] for s in server.seen)
    assert (first == second) is same  # a fresh salt per request; cache_prompt is always off
    if mode == "cache_prompt":
        assert first is False


def test_warmup_sends_one_request_and_swallows_failures(server):
    server.script.append(error(500, "cold"))
    with make_engine(server.base_url, send_kv_params=True) as engine:
        engine.warmup("snapkv", 0.5)
    assert [s.body["kv_budget"] for s in server.seen] == [0.5]


# -- failures of one attempt ---------------------------------------------------------------

def test_500_then_success_is_retried(server):
    server.script += [error(500, "overloaded"), error(503, "warming up")]
    delays: list[float] = []
    with make_engine(server.base_url) as engine:
        result, attempts = call_with_retries(lambda: engine.generate(REQ), max_retries=3,
                                             backoff_s=0.5, sleep=delays.append,
                                             rng=random.Random(0))
    assert (result.text, attempts, len(server.seen), len(delays)) == ("Paris", 3, 3, 2)


def _http_date(seconds_ahead: float) -> str:
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds_ahead)
    return email.utils.format_datetime(when, usegmt=True)


@pytest.mark.parametrize("retry_after, floor", [("3", 3.0), ("date+30s", 25.0)])
def test_429_retry_after_is_respected(server, retry_after, floor):
    # Retry-After may be seconds or an HTTP date (RFC 9110); both set the minimum wait.
    # The date is made here, not at collection, so a slow suite cannot push it into the past.
    if retry_after == "date+30s":
        retry_after = _http_date(30)
    server.script.append(error(429, "slow down", headers={"Retry-After": retry_after}))
    delays: list[float] = []
    with make_engine(server.base_url) as engine:
        _, attempts = call_with_retries(lambda: engine.generate(REQ), max_retries=2,
                                        backoff_s=0.01, sleep=delays.append)
    assert attempts == 2 and floor <= delays[0] <= 31.0


def test_retries_exhausted_raise_the_last_error(server):
    server.script += [error(502, "bad gateway")] * 3
    with make_engine(server.base_url) as engine, pytest.raises(EngineError, match="HTTP 502"):
        call_with_retries(lambda: engine.generate(REQ), max_retries=2, backoff_s=0.0,
                          sleep=lambda s: None)
    assert len(server.seen) == 3


@pytest.mark.parametrize("reply", [
    Reply(body=b"{not json"),  # a 200 whose body is garbage
    Reply(body=json.dumps({"object": "x"}).encode()),  # JSON, but no choices
], ids=["garbage", "no-choices"])
def test_invalid_json_answer_is_recorded_not_retried(server, reply):
    server.script.append(reply)
    with make_engine(server.base_url, stream=False) as engine, \
            pytest.raises(EngineError) as info:
        engine.generate(REQ)
    assert not info.value.transient and info.value.kind == "ENGINE_ERROR"
    assert "invalid JSON from server" in str(info.value)


@pytest.mark.parametrize("reply, message", [
    (Reply(text="Paris is the capital", cut_after=2), "payload is not completed"),  # dropped
    (Reply(text="Paris is the capital", cut_after=2, cut_mode="eof"), "cut midway"),
    (Reply(events=[json.dumps({"choices": [{"index": 0, "delta": {"content": "Par"}}]}),
                   '{"choices": [{"ind']), "invalid JSON in the stream"),
    (Reply(events=[json.dumps({"choices": [{"index": 0, "delta": {"content": "Par"}}]}),
                   json.dumps({"error": {"message": "CUDA out of memory"}})],
           ), "CUDA out of memory"),
], ids=["dropped", "clean-eof", "invalid-json", "error-event"])
def test_stream_broken_after_tokens_is_a_failure_not_a_retry(server, reply, message):
    server.script.append(reply)
    with make_engine(server.base_url) as engine, pytest.raises(EngineError) as info:
        call_with_retries(lambda: engine.generate(REQ), max_retries=3, backoff_s=0.0,
                          sleep=lambda s: None)
    assert not info.value.transient and info.value.kind == "ENGINE_ERROR"
    assert message in str(info.value) and len(server.seen) == 1


def test_stream_cut_before_any_data_is_retried(server):
    server.script += [Reply(cut_after=0), Reply(cut_after=0, cut_mode="eof")]
    with make_engine(server.base_url) as engine:
        result, attempts = call_with_retries(lambda: engine.generate(REQ), max_retries=3,
                                             backoff_s=0.0, sleep=lambda s: None)
    assert (result.text, attempts) == ("Paris", 3)


def test_400_is_not_transient_and_carries_the_server_message(server):
    server.script.append(error(400, "context length 9000 exceeds 8192"))
    with make_engine(server.base_url) as engine, pytest.raises(EngineError) as info:
        call_with_retries(lambda: engine.generate(REQ), max_retries=3, backoff_s=0.0,
                          sleep=lambda s: None)
    assert not info.value.transient and info.value.kind == "ENGINE_ERROR"
    assert "context length 9000 exceeds 8192" in str(info.value)
    assert len(server.seen) == 1  # never retried


@pytest.mark.parametrize("stream", [True, False])
def test_a_redirect_is_an_error_that_names_the_new_url(server, stream):
    moved = "https://example.invalid/v1/chat/completions"
    server.script.append(Reply(status=301, body=b"", headers={"Location": moved}))
    with make_engine(server.base_url, stream=stream) as engine, \
            pytest.raises(EngineError) as info:
        engine.generate(REQ)
    assert not info.value.transient and f"HTTP 301: redirected to {moved}" in str(info.value)
    assert len(server.seen) == 1  # not followed


@pytest.mark.parametrize("stream", [True, False])
def test_slow_first_byte_times_out_and_is_transient(server, stream):
    server.script.append(Reply(delay_s=5.0))
    with make_engine(server.base_url, stream=stream, request={"timeout_s": 0.3}) as engine:
        with pytest.raises(EngineError) as info:
            engine.generate(REQ)
    assert info.value.transient and info.value.kind == "TIMEOUT"


def test_slow_first_byte_within_the_deadline_is_answered(server):
    server.script.append(Reply(delay_s=0.3))
    with make_engine(server.base_url, request={"timeout_s": 5}) as engine:
        result = engine.generate(REQ)
    assert result.text == "Paris" and result.ttfb_s >= 0.3


def test_stream_stalled_after_tokens_times_out_without_retry(server):
    server.script.append(Reply(text="Paris is big", chunk_delay_s=5.0))
    with make_engine(server.base_url, request={"timeout_s": 1.0}) as engine:
        with pytest.raises(EngineError) as info:
            engine.generate(REQ)
    assert not info.value.transient and info.value.kind == "TIMEOUT"
    assert "not retried" in str(info.value)


def test_stream_kept_open_after_done_is_still_an_answer(server):
    server.script.append(Reply(text="Paris", keep_open_s=5.0))
    with make_engine(server.base_url, request={"timeout_s": 1.0}) as engine:
        result = engine.generate(REQ)
    assert result.text == "Paris" and result.finish_reason == "stop"


def test_refused_connection_is_transient():
    with make_engine(f"http://127.0.0.1:{free_port()}/v1") as engine:
        with pytest.raises(EngineError) as info:
            engine.generate(REQ)
    assert info.value.transient and info.value.kind == "ENGINE_ERROR"


# -- many requests at once ------------------------------------------------------------------

def _requests(n: int) -> list[GenerationRequest]:
    return [GenerationRequest(f"context {i}", f"question {i}?", 4, seed=i) for i in range(n)]


def test_generate_many_bounds_concurrency_and_answers_each_once(server):
    for seed in range(12):
        server.by_seed[seed] = [Reply(text=f"answer {seed}", delay_s=0.3)]
    with make_engine(server.base_url, concurrency=4) as engine:
        outcomes = list(engine.generate_many(_requests(12)))
    assert server.max_in_flight == 4
    assert sorted(o.index for o in outcomes) == list(range(12))
    assert all(o.result.text == f"answer {o.index}" and o.attempts == 1 for o in outcomes)


def test_generate_many_retries_inside_and_reports_failures(server):
    server.by_seed[0] = [error(503, "busy", {"Retry-After": "0"}), Reply(text="late")]
    server.by_seed[1] = [Reply(text="Paris is big", cut_after=1)]
    server.by_seed[2] = [error(400, "bad")]
    with make_engine(server.base_url, concurrency=3,
                     request={"max_retries": 2, "backoff_s": 0.01}) as engine:
        by_index = {o.index: o for o in engine.generate_many(_requests(3))}
    assert (by_index[0].result.text, by_index[0].attempts) == ("late", 2)
    assert by_index[1].result is None and by_index[1].attempts == 1
    assert not by_index[1].error.transient
    assert "HTTP 400" in str(by_index[2].error) and by_index[2].seconds > 0


def test_closing_generate_many_cancels_what_is_in_flight(server):
    for seed in range(8):
        server.by_seed[seed] = [Reply(delay_s=0.05 if seed == 0 else 5.0)]
    with make_engine(server.base_url, concurrency=4) as engine:
        outcomes = engine.generate_many(_requests(8))
        first = next(outcomes)
        outcomes.close()  # what a Ctrl-C in the runner does
    assert first.index == 0
    assert len([s for s in server.seen if s.method == "POST"]) <= 5  # nothing new was sent


# -- before a run -------------------------------------------------------------------------

def test_check_reachable_accepts_a_server_without_models(server):
    server.models_status = 404
    with make_engine(server.base_url) as engine:
        engine.check_reachable()
    assert [s.path for s in server.seen] == ["/v1/models"]


def test_check_reachable_rejects_a_dead_port(server):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    engine = make_engine(server.base_url, base_urls={"0.5": dead})
    with engine, pytest.raises(BadInput) as info:
        engine.check_reachable()
    message = str(info.value)
    assert dead in message and "unreachable" in message and "engine.base_urls['0.5']" in message


def test_unset_api_key_variable_is_bad_input(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BadInput, match=KEY_ENV):
        make_engine("http://127.0.0.1:9/v1", api_key_env=KEY_ENV)


@pytest.mark.parametrize("stream", [True, False])
def test_api_key_never_leaks(server, monkeypatch, stream):
    # A careless server or proxy echoes the Authorization header into its answers.
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script += [Reply(text=f"echo Bearer {SECRET}", extra={"debug": {"auth": SECRET}}),
                      error(400, f"bad key Bearer {SECRET}"), Reply(body=f"oops {SECRET}".encode())]
    with make_engine(server.base_url, api_key_env=KEY_ENV, stream=stream) as engine:
        result = engine.generate(REQ)
        errors = []
        for _ in range(2):
            with pytest.raises(EngineError) as info:
                engine.generate(REQ)
            errors.append(str(info.value))
    assert server.seen[0].headers["authorization"] == f"Bearer {SECRET}"  # it was sent
    stored = json.dumps([result.raw, result.notes, result.text, errors])
    assert SECRET not in stored


# -- endpoints ----------------------------------------------------------------------------

def test_resolve_base_url_order_and_budget_normalization():
    cfg = EngineConfig(kind="openai", base_url="http://shared/v1",
                       base_urls={"snapkv@0.5": "http://snap05/v1", "0.50": "http://any05/v1",
                                  "0.2": "http://any02/v1"})
    assert resolve_base_url(cfg, "snapkv", 0.5) == "http://snap05/v1"
    assert resolve_base_url(cfg, "h2o", 0.5) == "http://any05/v1"
    assert resolve_base_url(cfg, "snapkv", 0.2) == "http://any02/v1"
    assert resolve_base_url(cfg, "full", 1.0) == "http://shared/v1"


def test_resolve_base_url_missing_names_the_key():
    cfg = EngineConfig(kind="openai", base_urls={"0.5": "http://a/v1"})
    with pytest.raises(BadInput) as info:
        resolve_base_url(cfg, "snapkv", 0.2)
    assert "engine.base_urls" in str(info.value) and "snapkv@0.2" in str(info.value)


def test_api_key_reads_the_named_variable(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert api_key(EngineConfig(kind="openai", api_key_env=KEY_ENV)) == SECRET
    assert api_key(EngineConfig(kind="openai")) is None
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(BadInput) as info:
        api_key(EngineConfig(kind="openai", api_key_env=KEY_ENV))
    assert KEY_ENV in str(info.value)


def test_count_tokens_words_or_tokenizer():
    class FakeTokenizer:  # stands in for a transformers tokenizer: one id per character
        def __call__(self, text, add_special_tokens=True):
            assert add_special_tokens is False  # special tokens would inflate every length
            return type("Enc", (), {"input_ids": list(range(len(text)))})()

    settings = make_settings("http://127.0.0.1:9/v1")
    with OpenAIEngine(settings) as words:
        assert words.count_tokens("a  b\nc") == 3 and words.token_unit == "words"
    with OpenAIEngine(settings, tokenizer=FakeTokenizer()) as tokens:
        assert tokens.count_tokens("abcd") == 4 and tokens.token_unit == "tokens"
