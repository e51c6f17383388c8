"""The server's pure parts: prompt recovery, stream deltas, KV options, Prometheus text."""

from __future__ import annotations

import pytest

from kv_transition.data.prompt import context_part, full_prompt
from kv_transition.errors import BadInput
from kv_transition.serve.metrics import Histogram
from kv_transition.serve.options import request_kv, resolve_options
from kv_transition.serve.prompting import ProjectPrompt, parse_project_prompt
from kv_transition.serve.protocol import ApiError
from kv_transition.serve.streaming import TextDeltas
from kv_transition.settings import ServeConfig


@pytest.mark.parametrize("context, question, prefix", [
    ("Paris is in France.", "Where is Paris?", ""),
    ("Paris is in France.", "Where is Paris?", "The answer is"),
    # a context that quotes the template itself, and a prefix with inner spaces
    (full_prompt("inner", "inner question?") + "\n\nmore", "Real question?", " spaced  prefix"),
    ("", "Empty context?", ""),
])
def test_project_prompts_are_split_back_exactly(context, question, prefix):
    text = full_prompt(context, question, prefix)
    assert parse_project_prompt(text) == ProjectPrompt(context, question, prefix)


@pytest.mark.parametrize("text", [
    "hello world",
    context_part("no question follows"),
    full_prompt("c", "q") + "\n",  # re-rendering would not give the same text back
    "Question: q\nAnswer:",
])
def test_other_prompts_are_not_taken_for_the_template(text):
    assert parse_project_prompt(text) is None


class PieceTokenizer:
    """Each id decodes to a fixed piece; id 9 is half of a two-part character."""

    pieces = {1: " Par", 2: "is", 3: " ", 4: "é", 5: "!", 9: "\ufffd"}

    def decode(self, ids, skip_special_tokens=True):
        text = "".join(self.pieces[i] for i in ids)
        return text.replace("\ufffd\ufffd", "é")  # two halves make the character


def test_deltas_concatenate_to_the_final_text():
    deltas = TextDeltas(PieceTokenizer(), eos_ids={0})
    sent = [deltas.push(t) for t in (1, 2, 3, 9, 9, 5, 0)]
    assert sent == ["Par", "is", "", "", " é", "!", ""]  # nothing half-made, no trailing space
    assert deltas.finish("Paris é!") == "" and deltas.sent == "Paris é!"


def test_request_kv_per_request_and_fixed():
    free = resolve_options(ServeConfig())
    assert request_kv(free, None, None) == ("full", 1.0)
    assert request_kv(free, "snapkv", 0.25) == ("snapkv", 0.25)
    fixed = resolve_options(ServeConfig(policy="snapkv", budget=0.5))
    assert request_kv(fixed, None, None) == ("snapkv", 0.5) == request_kv(fixed, "snapkv", 0.5)
    for policy, budget in (("h2o", None), (None, 0.25)):
        with pytest.raises(ApiError) as info:
            request_kv(fixed, policy, budget)
        assert info.value.status == 400 and info.value.code == "kv_setting_fixed"
    with pytest.raises(ApiError, match="nan"):
        request_kv(free, "snapkv", float("nan"))


def test_bad_server_options_are_bad_input(monkeypatch):
    monkeypatch.delenv("KVT_UNSET_TOKEN", raising=False)
    with pytest.raises(BadInput, match="--budget"):
        resolve_options(ServeConfig(), policy="full", budget=0.5)
    with pytest.raises(BadInput, match="KVT_UNSET_TOKEN"):
        resolve_options(ServeConfig(), api_key_env="KVT_UNSET_TOKEN")
    monkeypatch.setenv("KVT_UNSET_TOKEN", "t0k")
    options = resolve_options(ServeConfig(max_body_mb=1), api_key_env="KVT_UNSET_TOKEN")
    assert options.api_key == "t0k" and options.max_body_bytes == 2**20
    assert "t0k" not in options.describe()


def test_histogram_buckets_are_cumulative():
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 7.0):
        hist.observe(value)
    assert hist.lines("x", 'e="a"') == [
        'x_bucket{e="a",le="0.1"} 1', 'x_bucket{e="a",le="1.0"} 3', 'x_bucket{e="a",le="+Inf"} 4',
        'x_sum{e="a"} 8.05', 'x_count{e="a"} 4']


def test_histogram_sum_of_a_tiny_wait_is_a_prometheus_float():
    # a queue wait of a few microseconds renders in exponent form, as the text format allows
    hist = Histogram((0.1,))
    hist.observe(3.4e-05)
    assert hist.lines("w")[-2] == "w_sum 3.4e-05"
    assert float(hist.lines("w")[-2].split()[1]) == 3.4e-05
