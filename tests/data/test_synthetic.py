import math
import re

import pytest

from kv_transition.data.synthetic import generate_examples, tolerance
from kv_transition.errors import BadInput
from kv_transition.settings import SYNTHETIC_TASKS


def words(text: str) -> int:
    return len(text.split())


def chars(text: str) -> int:
    return len(text) // 4


def pieces(text: str) -> int:  # a word-level tokenizer: digits and punctuation split off
    return len(re.findall(r"[A-Za-z]+|\d|[^\w\s]", text))


def test_same_arguments_give_identical_examples():
    a = generate_examples("mix", 300, 10, 7, words)
    b = generate_examples("mix", 300, 10, 7, words)
    c = generate_examples("mix", 300, 10, 8, words)
    assert a == b
    assert [e.context for e in a] != [e.context for e in c]
    assert len({e.example_id for e in a}) == 10 and a[3].example_id == "mix-300-3"


def test_mix_cycles_through_the_families():
    got = [e.meta["task"] for e in generate_examples("mix", 200, 10, 0, words)]
    assert got == list(SYNTHETIC_TASKS) * 2


def test_mix_cycles_through_the_chosen_families_only():
    got = [e.meta["task"] for e in generate_examples(
        "mix", 200, 6, 0, words, families=["niah_multikey", "niah_single"])]
    assert got == ["niah_multikey", "niah_single"] * 3
    with pytest.raises(BadInput, match="riddles"):
        generate_examples("mix", 200, 2, 0, words, families=["riddles"])


@pytest.mark.parametrize("count", [words, chars, pieces])
@pytest.mark.parametrize("target", [64, 256, 1000, 5000, 20000])
def test_context_is_sized_in_the_given_tokens(count, target):
    for ex in generate_examples("mix", target, 5, 1, count):
        assert abs(count(ex.context) - target) <= tolerance(target), ex.example_id


def test_count_tokens_is_called_logarithmically_often():
    calls = []

    def counting(text):
        calls.append(len(text))
        return chars(text)

    generate_examples("niah_single", 50000, 3, 0, counting)
    assert len(calls) <= 3 * (2 * math.log2(50000))
    assert len(calls) <= 3 * 6  # in practice interpolation needs a handful


def _after_key(context: str, key: str) -> list[str]:
    return re.findall(rf"for {key} is: (\d+)\.", context)


def test_niah_single_value_follows_its_key():
    for ex in generate_examples("niah_single", 500, 8, 0, words):
        key = re.search(r"number for (\w+) mentioned", ex.question).group(1)
        assert _after_key(ex.context, key) == ex.answers
        assert re.fullmatch(r"[1-9]\d{6}", ex.answers[0])
        assert ex.answer_prefix.endswith("is") and key in ex.answer_prefix
        assert ex.meta["metric"] == "ruler_all" and ex.meta["target_tokens"] == 500


def test_niah_multikey_asks_one_of_four_keys():
    for ex in generate_examples("niah_multikey", 500, 5, 0, words):
        key = re.search(r"number for (\w+) mentioned", ex.question).group(1)
        assert len(re.findall(r"The special magic number for \w+ is: \d+\.", ex.context)) == 4
        assert _after_key(ex.context, key) == ex.answers
        assert len(ex.meta["depths"]) == 4 and ex.meta["depths"][0] == ex.meta["depth"]


def test_niah_multivalue_returns_every_value_of_the_key():
    for ex in generate_examples("niah_multivalue", 500, 5, 0, words):
        key = re.search(r"numbers for (\w+) mentioned", ex.question).group(1)
        found = re.findall(rf"One of the special magic numbers for {key} is: (\d+)\.", ex.context)
        assert sorted(found) == sorted(ex.answers) and len(set(ex.answers)) == 4


def test_niah_multiquery_answers_follow_the_asked_keys():
    for ex in generate_examples("niah_multiquery", 500, 5, 0, words):
        keys = re.findall(r"(\w+)(?:,| and| mentioned)", ex.question.split("numbers for ")[1])
        assert len(keys) == 4
        assert [_after_key(ex.context, k)[0] for k in keys] == ex.answers


def test_variable_tracking_chain_is_in_order_and_complete():
    for ex in generate_examples("variable_tracking", 500, 5, 0, words):
        value = re.search(r"value (\d+) in", ex.question).group(1)
        first = re.findall(r"VAR (\w+) = (\d+)\.", ex.context)
        hops = re.findall(r"VAR (\w+) = VAR (\w+)\.", ex.context)
        assert first == [(ex.answers[0], value)]
        assert hops == [(new, old) for old, new in zip(ex.answers, ex.answers[1:])]
        assert ex.meta["depths"] == sorted(ex.meta["depths"])


def test_depths_spread_evenly_and_place_the_needle():
    exs = generate_examples("niah_single", 2000, 10, 3, words)
    depths = sorted(e.meta["depth"] for e in exs)
    assert depths == pytest.approx([(i + 0.5) / 10 for i in range(10)])
    assert [e.meta["depth"] for e in exs] != depths  # shuffled, not in index order
    for ex in exs:
        where = ex.context.index("special magic") / len(ex.context)
        assert abs(where - ex.meta["depth"]) < 0.05


def test_unknown_task_is_bad_input():
    with pytest.raises(BadInput, match="niah_single.*mix"):
        generate_examples("niah_double", 256, 1, 0, words)


def test_target_too_small_for_the_needles_is_bad_input():
    with pytest.raises(BadInput, match="too small"):
        generate_examples("niah_multikey", 12, 1, 0, words)


def test_further_questions_ask_the_other_needles_of_the_same_context():
    first, *more = generate_examples("niah_multikey", 300, 1, 3, words, questions=3)
    assert len(more) == 2 and {ex.context for ex in more} == {first.context}
    assert [ex.meta["cluster"] for ex in (first, *more)] == [first.example_id] * 3
    for ex in more:  # each asks one other key, and its value follows that key in the context
        key = re.search(r"number for (\w+) mentioned", ex.question).group(1)
        assert f"The special magic number for {key} is: {ex.answers[0]}." in ex.context
        assert ex.answers != first.answers
    # the first question is the one a single-question dataset asks
    assert generate_examples("niah_multikey", 300, 1, 3, words)[0].question == first.question


def test_a_context_with_one_needle_asks_one_question():
    examples = generate_examples("mix", 300, 5, 3, words, questions=4, families=["niah_single"])
    assert len(examples) == 5 and not any("cluster" in ex.meta for ex in examples)
    per_family = generate_examples("niah_multiquery", 300, 2, 3, words, questions=8)
    assert len(per_family) == 2 * 5  # its own question (all four keys), then each key alone
