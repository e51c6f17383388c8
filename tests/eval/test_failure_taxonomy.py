import pytest

from kv_transition.eval.failure_taxonomy import FAILURE_TYPES, classify_failure


@pytest.mark.parametrize("text, finish, error, expected", [
    ("", "timeout", "read timed out after 120 s", "TIMEOUT"),
    ("", "error", "CUDA out of memory", "ENGINE_ERROR"),
    ("  \n\t", "stop", None, "EMPTY_OUTPUT"),
    ("The special magic number for", "length", None, "TRUNCATED"),
    ("I'm sorry, but I cannot help with that.", "stop", None, "REFUSAL"),
    ("As an AI language model, I do not know.", "stop", None, "REFUSAL"),
    ("I can\u2019t answer that.", "stop", None, "REFUSAL"),
    ("?!... ***", "stop", None, "FORMAT_ERROR"),
    ("the the the the the the the the answer", "stop", None, "FORMAT_ERROR"),
])
def test_each_failure_class(text, finish, error, expected):
    failure_type, message = classify_failure(text, finish, error)
    assert failure_type == expected and failure_type in FAILURE_TYPES
    assert message


def test_messages_carry_the_useful_detail():
    assert classify_failure("", "error", "CUDA out of memory") == \
        ("ENGINE_ERROR", "CUDA out of memory")
    assert "may still be scored" in classify_failure("1234", "length")[1]
    assert "8 times" in classify_failure("x " * 8, "stop")[1]


def test_precedence_engine_before_text_before_content():
    assert classify_failure("I cannot", "timeout")[0] == "TIMEOUT"
    assert classify_failure("text", "error", None)[0] == "ENGINE_ERROR"
    assert classify_failure("", "length")[0] == "EMPTY_OUTPUT"
    assert classify_failure("I cannot stop stop stop stop stop stop stop stop", "length")[0] == \
        "TRUNCATED"
    assert classify_failure("I cannot" + " no" * 8, "stop")[0] == "REFUSAL"


def test_normal_answers_are_not_failures():
    assert classify_failure("The special magic number is 1234567.", "stop") is None
    assert classify_failure("ALPHA, BRAVO, GOLF", "stop") is None
    assert classify_failure("100000000", "stop") is None  # repeated digits are one token
    assert classify_failure("a a a a a a a b", "stop") is None  # 7 in a row is allowed
    assert classify_failure("I think it is Paris; I cannot be sure.", "stop") is None
