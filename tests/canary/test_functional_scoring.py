"""Functional tasks and their scorers on hand-made right and wrong answers."""

from __future__ import annotations

import json

import pytest

from kv_transition.canary import source as fdata
from kv_transition.data.vocab import vocabulary
from kv_transition.data.word_tokenizer import build_word_tokenizer
from kv_transition.errors import BadInput, DataError
from kv_transition.eval import functional as fe
from kv_transition.eval.metrics import score_prediction
from kv_transition.reference import formats

CODE_META = {"metric": "pass_at_1", "entry_point": "answer", "test": "assert answer() == 4985193\n"}
TOOL_META = {"metric": "tool_call", "tool_schema": fdata.TOOL_SCHEMA,
             "expected_call": {"name": "lookup", "arguments": {"key": "koala", "value": 4985193}}}


@pytest.fixture(scope="module")
def count_tokens():
    tok = build_word_tokenizer(vocabulary())
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


# ---------------------------------------------------------------- pass@1

@pytest.mark.parametrize("answer, expected", [
    ("def answer(): return 4985193", 1.0),
    ("```python\ndef answer():\n    return 4985193\n```\nThis returns the number.", 1.0),
    ("def answer(): return 4985194", 0.0),           # wrong value
    ("def answer(): return '4985193'", 0.0),         # a string is not the number
    ("def answer(: return 4985193", 0.0),            # syntax error
    ("def solve(): return 4985193", 0.0),            # wrong function name
    ("", 0.0),
])
def test_pass_at_1_runs_the_answer_against_its_test(answer, expected):
    assert fe.pass_at_1(answer, [], CODE_META) == expected
    assert score_prediction(answer, ["x"], "pass_at_1", CODE_META).acc == expected


def test_pass_at_1_humaneval_item_uses_prompt_test_and_check():
    meta = {"metric": "pass_at_1", "entry_point": "add", "check": True,
            "prompt": 'def add(a, b):\n    """Return a + b."""\n',
            "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}
    body_only = "    return a + b\n"
    whole = "```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "    return a - b\n"
    assert fe.pass_at_1(body_only, [], meta) == 1.0
    assert fe.pass_at_1(whole, [], meta) == 1.0
    assert fe.pass_at_1(wrong, [], meta) == 0.0
    result = fe.code_result(wrong, meta)
    assert result.exit_code == 1 and "AssertionError" in result.stderr


def test_a_hostile_answer_is_just_a_failed_test(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("x")
    answer = f"import os\nos.remove({str(victim)!r})\ndef answer(): return 4985193"
    assert fe.pass_at_1(answer, [], CODE_META) == 0.0
    assert victim.exists()


# ---------------------------------------------------------------- tool calls

def _call(**arguments) -> str:
    return json.dumps({"name": "lookup", "arguments": arguments})


@pytest.mark.parametrize("answer, parts", [
    # valid_json, name_ok, args_exact, args_match, schema_valid
    (_call(key="koala", value=4985193), (True, True, True, 1.0, True)),
    ("```json\n" + _call(key="koala", value=4985193) + "\n```", (True, True, True, 1.0, True)),
    (_call(key="koala", value=4985194), (True, True, False, 0.5, True)),
    (_call(key="koala", value="4985193"), (True, True, False, 0.5, False)),   # wrong type
    (_call(key="koala", value=4985193, extra=1), (True, True, False, 1.0, False)),
    (_call(key="koala"), (True, True, False, 0.5, False)),                    # missing value
    (json.dumps({"name": "search", "arguments": {"key": "koala", "value": 4985193}}),
     (True, False, True, 1.0, False)),
    ('{"name": "lookup", "arguments": {"key": "koala", "value": 4985193}',  # unclosed
     (False, False, False, 0.0, False)),
    ("[1, 2]", (True, False, False, 0.0, False)),
    ("", (False, False, False, 0.0, False)),
])
def test_tool_call_parts_are_scored_separately(answer, parts):
    s = fe.score_tool_call(answer, TOOL_META)
    assert (s.valid_json, s.name_ok, s.args_exact, s.args_match, s.schema_valid) == parts
    assert s.acc == float(all(parts[:3]) and parts[4])
    assert score_prediction(answer, ["x"], "tool_call", TOOL_META).acc == s.acc


# ---------------------------------------------------------------- the offline task source

@pytest.mark.parametrize("family", ["code", "tool", "code_long", "tool_long"])
def test_offline_items_use_the_reference_formats_and_their_gold_scores_one(family, count_tokens):
    items = fdata.generate_functional(family, 128, 5, 0, count_tokens)
    assert len(items) == 5 and len({ex.example_id for ex in items}) == 5
    fmt = formats.PYTHON if family.startswith("code") else formats.JSON
    for ex in items:
        assert ex.question.endswith(formats.CUES[fmt]) and ex.answer_prefix == ""
        assert abs(count_tokens(ex.context) - 128) <= 8
        assert ex.answers[0] == formats.functional_answer(fmt, ex.meta["key"],
                                                          [str(ex.meta["value"])], False)
        assert f"for {ex.meta['key']} is: {ex.meta['value']}." in ex.context
        gold = score_prediction(ex.answers[0], ex.answers, ex.meta["metric"], ex.meta)
        wrong = score_prediction(ex.answers[0].replace(str(ex.meta["value"]), "1234567"),
                                 ex.answers, ex.meta["metric"], ex.meta)
        assert gold.acc == 1.0 and wrong.acc == 0.0
    if family.endswith("_long"):  # the needed value lies far back
        assert all(ex.meta["depth"] < fdata.FAR_BACK for ex in items)
        assert all(ex.context.index(str(ex.meta["value"])) < 0.3 * len(ex.context)
                   for ex in items)


def test_mix_is_deterministic_and_cycles_families(count_tokens):
    a = fdata.generate_functional("mix", 96, 8, 3, count_tokens)
    b = fdata.generate_functional("mix", 96, 8, 3, count_tokens)
    assert [(x.example_id, x.context) for x in a] == [(x.example_id, x.context) for x in b]
    assert [x.meta["task"] for x in a[:4]] == ["code", "tool", "code_long", "tool_long"]
    with pytest.raises(BadInput, match="unknown functional task"):
        fdata.generate_functional("poetry", 96, 1, 0, count_tokens)


def test_tool_schema_is_printed_only_when_asked(count_tokens):
    plain = fdata.generate_functional("tool", 96, 1, 0, count_tokens)[0]
    shown = fdata.generate_functional("tool", 96, 1, 0, count_tokens, show_schema=True)[0]
    assert "properties" not in plain.question and '"properties"' in shown.question
    assert shown.question.endswith(formats.CUES[formats.JSON])


# ---------------------------------------------------------------- HumanEval JSONL

def _record(i: int, **over) -> dict:
    rec = {"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Double x.\"\"\"\n",
           "canonical_solution": "    return 2 * x\n", "entry_point": f"f{i}",
           "test": "def check(candidate):\n    assert candidate(2) == 4\n"}
    rec.update(over)
    return rec


def test_humaneval_loader_reads_records_that_score(tmp_path):
    path = tmp_path / "he.jsonl"
    path.write_text("\n".join(json.dumps(_record(i)) for i in range(3)) + "\n\n")
    items = fdata.load_humaneval(str(path))
    assert [ex.example_id for ex in items] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    ex = items[1]
    assert ex.context == _record(1)["prompt"] and ex.meta["entry_point"] == "f1"
    assert score_prediction(ex.answers[0], ex.answers, "pass_at_1", ex.meta).acc == 1.0
    assert score_prediction("    return x\n", ex.answers, "pass_at_1", ex.meta).acc == 0.0


@pytest.mark.parametrize("lines, line_no, message", [
    ([json.dumps(_record(0)), "{not json"], 2, "invalid JSON"),
    ([json.dumps(_record(0)), json.dumps({"task_id": "x", "prompt": "p"})], 2, "missing field"),
    ([json.dumps(_record(0, entry_point="not valid"))], 1, "not a Python identifier"),
    ([json.dumps(_record(0, test=7))], 1, "'test' must be a non-empty string"),
    ([json.dumps(_record(0)), json.dumps(_record(0))], 2, "duplicate task_id"),
    (["[1, 2]"], 1, "expected a JSON object"),
])
def test_humaneval_loader_names_the_bad_line(tmp_path, lines, line_no, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        fdata.load_humaneval(str(path))
    assert err.value.line == line_no and str(path) in str(err.value)


def test_humaneval_loader_rejects_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        fdata.load_humaneval(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        fdata.load_humaneval(str(tmp_path / "empty.jsonl"))
