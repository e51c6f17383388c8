"""A model with a chat template: the server builds the same token ids as the in-process engine
for chat and completions requests, answer prefix included, and renders other chats itself."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.builtin import resolve_builtin
from kv_transition.engines.openai_compat import OpenAIEngine
from kv_transition.serve.options import resolve_options
from kv_transition.serve.server import ServerThread, build_state, load_engine
from kv_transition.settings import Settings

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
            "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")
STORY = "The river was quiet and the village said that the garden was green . " * 5


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, models_root):
    """The builtin tiny model with a chat template added to its tokenizer."""
    home = tmp_path_factory.mktemp("chat_home")
    model_dir = home / "chat-tiny"
    shutil.copytree(resolve_builtin("builtin:tiny-random", models_root), model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    settings = Settings.model_validate({
        "model": {"name": str(model_dir), "dtype": "float32", "device": "cpu"}})
    engine = load_engine(settings, home)
    server = ServerThread(build_state(engine, settings, resolve_options(settings.serve))).start()
    yield settings, engine, server
    server.stop()
    engine.close()


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_template_prompts_match_the_in_process_engine(chat_model, endpoint):
    settings, engine, server = chat_model
    assert engine.use_chat  # the in-process engine wraps prompts in the template
    http = OpenAIEngine(Settings.model_validate({
        "model": {"name": settings.model.name},
        "engine": {"kind": "openai", "base_url": server.base_url, "endpoint": endpoint,
                   "send_kv_params": True}}))
    with http:
        for request in (
                GenerationRequest(STORY, "What was green ?", 6, policy="snapkv", budget=0.5,
                                  answer_prefix="The answer is"),
                GenerationRequest(STORY, "Who said that ?", 6)):
            got, want = http.generate(request), engine.generate(request)
            served = got.notes["server_telemetry"]
            assert served["token_ids"] == want.raw["token_ids"] and got.text == want.text
            assert (served["context_tokens"], served["question_tokens"]) == \
                (want.notes["context_tokens"], want.notes["question_tokens"])
            assert served["chat_template"] is True


def test_other_chats_are_rendered_with_the_template(chat_model):
    settings, engine, server = chat_model
    messages = [{"role": "system", "content": "Be brief ."},
                {"role": "user", "content": "What was green ?"}]
    response = httpx.post(server.base_url + "/chat/completions", timeout=60, json={
        "model": settings.model.name, "messages": messages, "max_tokens": 4})
    rendered = engine.tokenizer.apply_chat_template(messages, tokenize=False,
                                                    add_generation_prompt=True)
    telemetry = response.json()["kv_telemetry"]
    assert response.status_code == 200 and telemetry["prompt_format"] == "text"
    expected = len(engine.tokenizer(rendered, add_special_tokens=False).input_ids)
    assert telemetry["prompt_tokens"] == expected
