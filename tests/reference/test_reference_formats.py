"""Answer formats: rendering, parsing without execution, and the prompt wording they rely on."""

import random

import pytest

from kv_transition.data.synthetic import generate_examples, single_key_question
from kv_transition.reference import formats, qa
from kv_transition.reference.formats import JSON, PYTHON, score_functional

WORDS = lambda text: len(text.split())  # noqa: E731  (sizing only; the tests read the text)


@pytest.mark.parametrize("fmt", formats.FUNCTIONAL)
@pytest.mark.parametrize("values", [["4985193"], ["4985193", "1023456", "7777777"]])
def test_rendered_answers_score_as_correct(fmt, values):
    several = len(values) > 1
    text = formats.functional_answer(fmt, "koala", values, several)
    assert score_functional(fmt, text, "koala", values, several) == \
        formats.FunctionalScore(True, True)
    # several values: their order is not part of the task
    assert score_functional(fmt, text, "koala", values[::-1], several).correct


def test_the_documented_shapes_are_exact():
    assert formats.functional_answer(PYTHON, "koala", ["4985193"], False) == \
        "def answer(): return 4985193"
    assert formats.functional_answer(JSON, "koala", ["1", "2"], True) == \
        '{"name": "lookup", "arguments": {"key": "koala", "value": [1, 2]}}'
    assert formats.functional_question("What is it?", JSON) == \
        "What is it? Answer with a JSON tool call."


@pytest.mark.parametrize("fmt,text,valid,correct", [
    (PYTHON, "def answer(): return 4985193", True, True),
    (PYTHON, "  def answer(): return 4985193  ", True, True),
    (PYTHON, "def answer(): return 4985194", True, False),
    (PYTHON, "def answer(): return '4985193'", True, False),       # a string is not the number
    (PYTHON, "def answer(): return [4985193]", True, False),       # nor is a list of it
    (PYTHON, "def answer(x): return 4985193", False, False),
    (PYTHON, "def other(): return 4985193", False, False),
    (PYTHON, "def answer(): return __import__('os').getcwd()", False, False),  # never executed
    (PYTHON, "def answer(): return 4985193 def", False, False),
    (PYTHON, "4985193", False, False),
    (JSON, '{"name": "lookup", "arguments": {"key": "koala", "value": 4985193}}', True, True),
    (JSON, '{"name": "lookup", "arguments": {"key": "lemur", "value": 4985193}}', True, False),
    (JSON, '{"name": "lookup", "arguments": {"key": "koala", "value": "4985193"}}', True, False),
    (JSON, '{"name": "search", "arguments": {"key": "koala", "value": 4985193}}', False, False),
    (JSON, '{"name": "lookup", "arguments": {"key": "koala"}}', False, False),
    (JSON, '{"name": "lookup", "arguments": {"key": "koala", "value": 4985193}', False, False),
    (JSON, '[1, 2]', False, False),
])
def test_functional_scoring(fmt, text, valid, correct):
    assert score_functional(fmt, text, "koala", ["4985193"], False) == \
        formats.FunctionalScore(valid, correct)


def test_several_values_must_all_be_there():
    golds = ["1111111", "2222222"]
    assert not score_functional(PYTHON, "def answer(): return [1111111]", "k", golds, True).correct
    assert not score_functional(PYTHON, "def answer(): return 1111111", "k", golds, True).correct
    assert score_functional(PYTHON, "def answer(): return [2222222, 1111111]", "k", golds,
                            True).correct


@pytest.mark.parametrize("task", ["niah_single", "niah_multikey"])
def test_single_key_wording_is_the_generators(task):
    # the extra training questions must read exactly like the evaluation's question
    for ex in generate_examples(task, 200, 5, 3, WORDS):
        assert single_key_question(qa.asked_key(ex)) == (ex.question, ex.answer_prefix)


def test_facts_are_read_in_context_order_and_match_the_gold():
    for ex in generate_examples("niah_multivalue", 300, 4, 1, WORDS):
        found = qa.facts(ex.context)
        assert len(found) == 4 and {k for k, _ in found} == {qa.asked_key(ex)}
        assert sorted(v for _, v in found) == sorted(ex.answers)
        positions = [ex.context.index(v) for _, v in found]
        assert positions == sorted(positions)


@pytest.mark.parametrize("task", formats.FUNCTIONAL_TASKS)
def test_functional_ask_targets_score_as_correct(task):
    ex = generate_examples(task, 200, 1, 0, WORDS)[0]
    for fmt in formats.FUNCTIONAL:
        ask = qa.functional_ask(ex, fmt)
        assert ask.question.endswith(formats.CUES[fmt]) and ask.answer_prefix == ""
        assert score_functional(fmt, ask.target, qa.asked_key(ex), ex.answers,
                                task == "niah_multivalue").correct


def test_every_key_is_asked_once_and_the_generators_question_is_among_them():
    ex = generate_examples("niah_multiquery", 300, 1, 0, WORDS)[0]
    asks = qa.asks_for(ex, random.Random(0), {formats.TEXT: 1.0})
    keys = [k for k, _ in qa.facts(ex.context)]
    assert len(asks) == len(keys) + 1
    assert sorted(a.question for a in asks[:]) == sorted(
        [single_key_question(k)[0] for k in keys] + [ex.question])
    for ask in asks:  # text answers contain exactly what RULER scoring looks for
        if ask.question == ex.question:
            assert all(v in ask.target for v in ex.answers)
