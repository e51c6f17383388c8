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
from kv_transition.run.retries import call_with_retries
from kv_transition.settings import EngineConfig, Settings

try:  # tests/ may or may not become a package; the helper sits next to this file either way
    from .fake_openai_server import FakeOpenAIServer, Reply, error
except ImportError:
    from fake_openai_server import FakeOpenAIServer, Reply, error

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

def test_chat_request_and_result(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with make_engine(server.base_url, api_key_env=KEY_ENV, send_kv_params=True) as engine:
        result = engine.generate(REQ)
    (seen,) = server.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    content = context_part(REQ.context) + question_part(REQ.question, REQ.answer_prefix)
    assert seen.body == {
        "model": "fake-model", "max_tokens": 8, "temperature": 0.0, "seed": 7,
        "messages": [{"role": "user", "content": content}],
        "kv_policy": "snapkv", "kv_budget": 0.5,
    }
    assert (result.text, result.finish_reason) == ("Paris", "stop")
    assert (result.prompt_tokens, result.completion_tokens) == (42, 3)
    assert result.latency_s > 0 and result.ttfb_s == result.latency_s
    assert result.notes["ttfb"] == "non-streaming: equals latency"
    assert result.raw["choices"][0]["message"]["content"] == "Paris"


def test_completions_request_without_kv_params_or_auth(server):
    server.script.append(Reply(text=" Paris and", finish_reason="length"))
    with make_engine(server.base_url + "/", endpoint="completions") as engine:
        result = engine.generate(REQ)
    (seen,) = server.seen
    assert seen.path == "/v1/completions"  # the trailing slash of the base URL is tolerated
    assert "authorization" not in seen.headers
    assert seen.body["prompt"] == full_prompt(REQ.context, REQ.question, REQ.answer_prefix)
    assert "kv_policy" not in seen.body and "messages" not in seen.body
    assert (result.text, result.finish_reason) == (" Paris and", "length")


def test_server_timings_are_kept(server):
    timings = {"prompt_n": 42, "prompt_ms": 120.0, "predicted_n": 3, "predicted_ms": 30.0}
    server.script.append(Reply(extra={"timings": timings}, finish_reason=None))
    with make_engine(server.base_url) as engine:
        result = engine.generate(REQ)
    assert result.notes["server_timings"] == timings
    assert (result.prefill_s, result.decode_s) == pytest.approx((0.12, 0.03))
    assert result.finish_reason == "stop" and result.notes["server_finish_reason"] is None


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


# -- failures -----------------------------------------------------------------------------

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


@pytest.mark.parametrize("body", [b"{not json", json.dumps({"object": "x"}).encode()])
def test_invalid_body_is_transient(server, body):
    server.script.append(Reply(body=body))
    with make_engine(server.base_url) as engine, pytest.raises(EngineError) as info:
        engine.generate(REQ)
    assert info.value.transient and info.value.kind == "ENGINE_ERROR"
    assert "invalid JSON from server" in str(info.value)


def test_400_is_not_transient_and_carries_the_server_message(server):
    server.script.append(error(400, "context length 9000 exceeds 8192"))
    with make_engine(server.base_url) as engine, pytest.raises(EngineError) as info:
        call_with_retries(lambda: engine.generate(REQ), max_retries=3, backoff_s=0.0,
                          sleep=lambda s: None)
    assert not info.value.transient and info.value.kind == "ENGINE_ERROR"
    assert "context length 9000 exceeds 8192" in str(info.value)
    assert len(server.seen) == 1  # never retried


def test_slow_server_times_out(server):
    server.script.append(Reply(delay_s=5.0))
    with make_engine(server.base_url, request={"timeout_s": 0.2}) as engine:
        with pytest.raises(EngineError) as info:
            engine.generate(REQ)
    assert info.value.transient and info.value.kind == "TIMEOUT"


def test_refused_connection_is_transient():
    with make_engine(f"http://127.0.0.1:{free_port()}/v1") as engine:
        with pytest.raises(EngineError) as info:
            engine.generate(REQ)
    assert info.value.transient and info.value.kind == "ENGINE_ERROR"


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


def test_api_key_never_leaks(server, monkeypatch):
    # A careless server or proxy echoes the Authorization header into its answers.
    monkeypatch.setenv(KEY_ENV, SECRET)
    server.script += [Reply(text=f"echo Bearer {SECRET}", extra={"debug": {"auth": SECRET}}),
                      error(400, f"bad key Bearer {SECRET}"), Reply(body=f"oops {SECRET}".encode())]
    with make_engine(server.base_url, api_key_env=KEY_ENV) as engine:
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
