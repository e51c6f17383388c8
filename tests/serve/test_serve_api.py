"""The server on loopback with the builtin tiny model: answers, streaming, errors, auth, queue."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from kv_transition.data.prompt import full_prompt
from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.openai_compat import OpenAIEngine
from kv_transition.settings import Settings

MODEL = "builtin:tiny-random"
STORY = ("The river was quiet and the village said that the garden was green . " * 6).strip()

REQUESTS = [
    GenerationRequest(STORY, "What was green ?", 8, policy="full", budget=1.0),
    GenerationRequest(STORY * 2, "What was quiet ?", 8, policy="snapkv", budget=0.5,
                      answer_prefix="The answer is"),
    GenerationRequest(STORY, "Who said that ?", 8, policy="streamingllm", budget=0.5,
                      query_aware=True),
]


def client(base_url: str, **engine) -> OpenAIEngine:
    engine = {"kind": "openai", "base_url": base_url, "send_kv_params": True, **engine}
    return OpenAIEngine(Settings.model_validate({"engine": engine, "model": {"name": MODEL}}))


def post(server, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(server.base_url + path, json={"model": MODEL, **body}, timeout=60,
                      **kwargs)


def completion(prompt: str, **extra) -> dict:
    return {"prompt": prompt, "max_tokens": 4, **extra}


# -- the same answers as the in-process engine ------------------------------------------------

@pytest.mark.parametrize("endpoint, stream", [("completions", False), ("chat", True),
                                              ("chat", False), ("completions", True)])
def test_answers_match_the_in_process_engine(served_engine, start_server, endpoint, stream):
    _, engine = served_engine
    server = start_server()
    with client(server.base_url, endpoint=endpoint, stream=stream) as http:
        for request in REQUESTS:
            got, want = http.generate(request), engine.generate(request)
            served = got.notes["server_telemetry"]
            assert got.text == want.text and got.finish_reason == want.finish_reason
            assert served["token_ids"] == want.raw["token_ids"]
            # the same prompt split: compression stopped at the same token
            assert (served["context_tokens"], served["question_tokens"]) == \
                (want.notes["context_tokens"], want.notes["question_tokens"])
            assert served["applied"] == want.raw["applied"] and got.kv_bytes == want.kv_bytes
            assert (got.prompt_tokens, got.completion_tokens) == \
                (want.prompt_tokens, want.completion_tokens)
            assert served["prompt_format"] == "project"


def test_stream_sends_each_token_as_it_is_chosen(start_server):
    server = start_server()
    body = {"model": MODEL, "messages": [{"role": "user", "content": STORY}], "max_tokens": 8,
            "stream": True}
    texts, finals = [], []
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                texts += [c["delta"].get("content") for c in chunk["choices"]
                          if c["delta"].get("content")]
                finals += [chunk] if "kv_telemetry" in chunk else []
    whole = post(server, "/chat/completions", {"messages": body["messages"], "max_tokens": 8})
    assert "".join(texts) == whole.json()["choices"][0]["message"]["content"]
    # one delta per generated word, sent while decoding: not the whole text at the end
    assert len(texts) > 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")


# -- what a client can get wrong ------------------------------------------------------------

@pytest.mark.parametrize("body, status, code, param", [
    (completion("x", kv_policy="nope"), 400, "invalid_value", "kv_policy"),
    (completion("x", kv_policy="snapkv", kv_budget=0), 400, "invalid_value", "kv_budget"),
    (completion("x", kv_policy="snapkv", kv_budget=1.5), 400, "invalid_value", "kv_budget"),
    (completion("x", kv_policy="full", kv_budget=0.5), 400, "invalid_value", "kv_budget"),
    (completion("x", kv_budget=True), 400, "invalid_value", "kv_budget"),
    (completion("x", n=2), 400, "invalid_value", "n"),
    (completion("x", max_tokens=0), 400, "invalid_value", "max_tokens"),
    ({"prompt": ["a", "b"]}, 400, "invalid_value", "prompt"),
    ({"messages": []}, 400, "invalid_value", "messages"),
    (completion("x", model="gpt-4"), 404, "model_not_found", "model"),
], ids=["unknown-policy", "budget-0", "budget-1.5", "full-below-1", "budget-bool", "n-2",
        "max-tokens-0", "two-prompts", "no-messages", "unknown-model"])
def test_bad_requests_get_openai_errors(start_server, body, status, code, param):
    server = start_server()
    path = "/chat/completions" if "messages" in body else "/completions"
    response = post(server, path, body)
    error = response.json()["error"]
    assert response.status_code == status, response.text
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == "invalid_request_error" and error["message"]


def test_context_longer_than_the_model_is_a_400(served_engine, start_server):
    _, engine = served_engine
    server = start_server()
    words = " ".join(["river"] * (engine.max_positions + 10))
    response = post(server, "/completions", completion(full_prompt(words, "Which ?")))
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "context_length_exceeded"
    assert str(engine.max_positions) in error["message"] and error["param"] == "prompt"


def test_invalid_json_and_oversized_bodies(start_server):
    server = start_server(max_body_bytes=2000)
    bad = httpx.post(server.base_url + "/completions", content=b"{oops", timeout=30)
    big = post(server, "/completions", completion("river " * 1000))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert big.status_code == 413 and "2000 bytes" in big.json()["error"]["message"]


def test_chat_with_several_messages_needs_a_chat_template(start_server):
    server = start_server()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    response = post(server, "/chat/completions", {"messages": messages})
    assert response.status_code == 400 and "chat template" in response.json()["error"]["message"]


def test_free_text_is_prefilled_whole(start_server):
    server = start_server()
    response = post(server, "/completions", completion(STORY, kv_policy="snapkv",
                                                       kv_budget=0.5))
    telemetry = response.json()["kv_telemetry"]
    assert response.status_code == 200 and telemetry["prompt_format"] == "text"
    assert telemetry["question_tokens"] == 0 and telemetry["applied"]["policy"] == "snapkv"
    assert telemetry["kv_bytes"] < telemetry["kv_bytes_uncompressed"]


# -- server-side settings -----------------------------------------------------------------------

def test_bearer_token(start_server):
    server = start_server(api_key="s3cret-token")
    root = server.base_url.removesuffix("/v1")
    good = {"Authorization": "Bearer s3cret-token"}
    missing = httpx.get(server.base_url + "/models")
    wrong = httpx.get(server.base_url + "/models", headers={"Authorization": "Bearer nope"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "s3cret" not in missing.text + wrong.text
    assert httpx.get(server.base_url + "/models", headers=good).json()["data"][0]["id"] == MODEL
    assert httpx.get(root + "/metrics").status_code == 401
    assert httpx.get(root + "/metrics", headers=good).status_code == 200
    assert httpx.get(root + "/health").json()["status"] == "ok"  # probes need no token
    assert post(server, "/completions", completion("x"), headers=good).status_code == 200


def test_policy_and_budget_fixed_at_start(start_server):
    server = start_server(policy="snapkv", budget=0.5)
    plain = post(server, "/completions", completion(STORY))
    same = post(server, "/completions", completion(STORY, kv_policy="snapkv", kv_budget=0.5))
    other = post(server, "/completions", completion(STORY, kv_policy="streamingllm"))
    applied = plain.json()["kv_telemetry"]["applied"]
    assert (applied["policy"], applied["compression_ratio"]) == ("snapkv", 0.5)
    assert same.status_code == 200
    assert other.status_code == 400 and other.json()["error"]["code"] == "kv_setting_fixed"


def _count_generations(engine, monkeypatch):
    """Instrument engine.generate: the peak number of calls in progress at once."""
    original, lock = engine.generate, threading.Lock()
    state = {"active": 0, "peak": 0, "errors": []}

    def counting(request, **kwargs):
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        try:
            return original(request, **kwargs)
        except Exception as exc:
            state["errors"].append(type(exc).__name__)
            raise
        finally:
            with lock:
                state["active"] -= 1

    monkeypatch.setattr(engine, "generate", counting)
    return state, original


def test_concurrent_requests_are_queued_never_interleaved(served_engine, start_server,
                                                          monkeypatch):
    _, engine = served_engine
    server = start_server()
    state, original = _count_generations(engine, monkeypatch)
    requests = [GenerationRequest(STORY, f"What was {w} ?", 6, policy="snapkv", budget=0.5)
                for w in ("green", "quiet", "said", "the", "river", "village")]
    with client(server.base_url, concurrency=6) as http:
        outcomes = list(http.generate_many(requests))
    assert state["peak"] == 1
    for outcome in outcomes:
        assert outcome.result.text == original(requests[outcome.index]).text
    waits = [o.result.notes["server_telemetry"]["queue_s"] for o in outcomes]
    assert max(waits) > 0.01  # they did wait for each other


def test_a_full_queue_answers_503(served_engine, start_server):
    server = start_server(max_queue=1)
    root = server.base_url.removesuffix("/v1")
    slow = threading.Thread(target=post, args=(server, "/completions",
                                               completion(STORY, max_tokens=300)))
    slow.start()
    deadline = time.time() + 30
    while httpx.get(root + "/health").json()["queue_depth"] == 0 and time.time() < deadline:
        time.sleep(0.005)
    busy = post(server, "/completions", completion("x"))
    slow.join()
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "server_busy"


def test_a_client_that_leaves_mid_stream_frees_the_model(served_engine, start_server,
                                                         monkeypatch):
    _, engine = served_engine
    server = start_server()
    state, _ = _count_generations(engine, monkeypatch)
    body = {"model": MODEL, "prompt": STORY, "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", server.base_url + "/completions", json=body) as response:
        for line in response.iter_lines():
            if '"text": "' in line and '"text": ""' not in line:
                break  # the first token arrived; hang up
    deadline = time.time() + 30
    while state["active"] and time.time() < deadline:
        time.sleep(0.01)
    assert state["errors"] == ["ClientGone"]  # generation stopped, not run to 2000 tokens


# -- observability --------------------------------------------------------------------------

# A sample's value is a Go float: a tiny queue wait prints as 3.4e-05, which the format allows.
_SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9]+(\.[0-9]*)?(e[+-]?[0-9]+)?$')


def test_metrics_count_requests_in_prometheus_format(start_server):
    server = start_server()
    root = server.base_url.removesuffix("/v1")
    answers = [post(server, "/completions", completion(STORY)).json() for _ in range(2)]
    post(server, "/completions", completion("x", kv_policy="nope"))
    response = httpx.get(root + "/metrics")
    text = response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(_SAMPLE.match(line) for line in samples), samples
    assert 'kvt_requests_total{endpoint="completions",status="200"} 2' in samples
    assert 'kvt_requests_total{endpoint="completions",status="400"} 1' in samples
    generated = sum(a["usage"]["completion_tokens"] for a in answers)
    assert f"kvt_completion_tokens_total {generated}" in samples
    assert 'kvt_request_duration_seconds_count{endpoint="completions"} 3' in samples
    assert "kvt_queue_depth 0" in samples


def test_models_and_health(start_server):
    server = start_server()
    models = httpx.get(server.base_url + "/models").json()
    health = httpx.get(server.base_url.removesuffix("/v1") + "/health").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert health == {"status": "ok", "model": MODEL, "queue_depth": 0}
