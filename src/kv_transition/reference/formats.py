"""The answer formats the reference model is trained on, selected by the prompt alone.

The prompt is always the project's template (``data/prompt.py``): context part, then
``Question: {question}\\nAnswer:{prefix}``. What the model writes after it depends on the question:

- ``text``: the generator's own question and answer prefix; the model completes the sentence,
  e.g. ``... is`` → `` 4985193.`` or ``... are`` → `` 1, 2, 3 and 4.``
- ``python``: the question followed by the cue ``Answer with a Python function.`` and an empty
  answer prefix; the model writes ``def answer(): return 4985193`` (a list for several values).
- ``json``: the question followed by ``Answer with a JSON tool call.`` and an empty prefix; the
  model writes ``{"name": "lookup", "arguments": {"key": "koala", "value": 4985193}}``.

The functional formats cover the key → value retrieval tasks (``FUNCTIONAL_TASKS``); several
values are listed in the order they appear in the context. A caller that can set the question
(a functional canary, a serving test) gets them without retraining.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass

TEXT, PYTHON, JSON = "text", "python", "json"
FORMATS = (TEXT, PYTHON, JSON)
FUNCTIONAL = (PYTHON, JSON)
CUES = {PYTHON: "Answer with a Python function.", JSON: "Answer with a JSON tool call."}
TOOL_NAME = "lookup"
FUNCTION_NAME = "answer"
FUNCTIONAL_TASKS = ("niah_single", "niah_multikey", "niah_multivalue")


def functional_question(question: str, fmt: str) -> str:
    """The question that asks for ``fmt``; use it with an empty answer prefix."""
    return f"{question} {CUES[fmt]}"


def text_list(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: the generator's way of listing several things."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def text_answer(values: list[str]) -> str:
    """What follows the text format's answer prefix (leading space included)."""
    return f" {text_list(values)}."


def functional_answer(fmt: str, key: str, values: list[str], several: bool) -> str:
    """The exact answer in a functional format (no leading space; the prompt supplies it)."""
    ints = [int(v) for v in values]
    value: int | list[int] = ints if several else ints[0]
    if fmt == PYTHON:
        return f"def {FUNCTION_NAME}(): return {value!r}"
    if fmt == JSON:
        return json.dumps({"name": TOOL_NAME, "arguments": {"key": key, "value": value}})
    raise ValueError(f"not a functional format: {fmt!r}")


@dataclass
class FunctionalScore:
    valid: bool    # the output parses as the format (a Python function / a tool-call object)
    correct: bool  # and it returns exactly the gold value(s) (for JSON: under the asked key)


def _python_value(text: str):
    """The literal that ``def answer(): return <literal>`` returns, without executing it."""
    module = ast.parse(text)
    if len(module.body) != 1 or not isinstance(fn := module.body[0], ast.FunctionDef):
        raise ValueError("not a single function definition")
    args = fn.args
    if fn.name != FUNCTION_NAME or args.args or args.posonlyargs or args.kwonlyargs:
        raise ValueError(f"not `def {FUNCTION_NAME}():`")
    if len(fn.body) != 1 or not isinstance(fn.body[0], ast.Return) or fn.body[0].value is None:
        raise ValueError("the body is not a single return")
    return ast.literal_eval(fn.body[0].value)


def _json_call(text: str) -> tuple[object, object]:
    call = json.loads(text)
    if not isinstance(call, dict) or call.get("name") != TOOL_NAME:
        raise ValueError(f"not a {TOOL_NAME!r} call")
    arguments = call.get("arguments")
    if not isinstance(arguments, dict) or set(arguments) != {"key", "value"}:
        raise ValueError("arguments must be exactly key and value")
    return arguments["key"], arguments["value"]


def _same_value(value: object, golds: list[str], several: bool) -> bool:
    if several:  # the order of several values is not part of the task
        return isinstance(value, list) and all(type(v) is int for v in value) and \
            sorted(str(v) for v in value) == sorted(golds)
    return type(value) is int and [str(value)] == golds


def score_functional(fmt: str, text: str, key: str, golds: list[str],
                     several: bool) -> FunctionalScore:
    """Parse (never execute) a functional answer and compare it with the gold value(s)."""
    try:
        if fmt == PYTHON:
            asked, value = key, _python_value(text.strip())
        else:
            asked, value = _json_call(text.strip())
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return FunctionalScore(valid=False, correct=False)
    return FunctionalScore(valid=True, correct=asked == key and _same_value(value, golds, several))
