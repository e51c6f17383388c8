"""Functional scorers: pass@1 by running the code in the sandbox, and tool-call checks.

Both are registered in ``eval.metrics.METRICS`` (``pass_at_1``, ``tool_call``), so ``score``
dispatches them like any metric and ``scores.acc`` is the primary outcome. The functional
canary's task (``canary/task.py``) pairs them with its data source; the parts of a tool call
(valid JSON, function name, arguments exact and per argument, schema-valid) and the sandbox's
verdict (exit status, timeout) go to its ``functional_scores`` table (``canary/score.py``), which
runs the sandbox in parallel first, so the metric then finds each program's result in the cache
instead of running it again.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from kv_transition.eval.sandbox import SandboxResult, run_python

CODE_TIMEOUT_S = 10.0  # per program; an item's meta["timeout_s"] overrides it
FUNCTIONAL_METRICS = ("pass_at_1", "tool_call")
_FENCE = re.compile(r"```[ \t]*(?:python|py|json)?[ \t]*\n(.*?)(?:```|$)", re.S | re.I)


def strip_fence(text: str) -> str:
    """The first fenced block's body when the answer has one (chat models wrap code)."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


# ---------------------------------------------------------------- code

def build_program(completion: str, meta: dict) -> str:
    """The file the sandbox runs: [prompt code] + the answer's code + the test [+ check()]."""
    parts = [meta.get("prompt", ""), strip_fence(completion).strip("\n"), meta.get("test", "")]
    if meta.get("check"):  # HumanEval: the test defines check(candidate)
        parts.append(f"check({meta['entry_point']})")
    return "\n\n".join(p for p in parts if p) + "\n"


@functools.lru_cache(maxsize=8192)
def run_program(program: str, timeout_s: float) -> SandboxResult:
    """Cached: an answer unchanged by compression is not run again for every setting."""
    return run_python(program, timeout_s)


def code_result(completion: str, meta: dict) -> SandboxResult:
    return run_program(build_program(completion, meta),
                       float(meta.get("timeout_s", CODE_TIMEOUT_S)))


def pass_at_1(pred: str, golds: list[str], meta: dict) -> float:
    """1.0 if the answer's code passes the item's test in the sandbox (one sample: pass@1)."""
    if not pred.strip():
        return 0.0
    return float(code_result(pred, meta).passed)


# ---------------------------------------------------------------- tool calls

@dataclass
class ToolCallScore:
    valid_json: bool
    name_ok: bool
    args_exact: bool
    args_match: float  # share of the expected arguments given with exactly the expected value
    schema_valid: bool

    @property
    def acc(self) -> float:
        """The primary outcome: a call a program could execute and that does the right thing."""
        return float(self.valid_json and self.name_ok and self.args_exact and self.schema_valid)


def _canon(value: Any) -> str:
    # JSON text with sorted keys: 1, 1.0, "1" and true stay different, as they are to a tool
    return json.dumps(value, sort_keys=True)


def parse_call(text: str) -> tuple[bool, Any]:
    """(valid JSON?, the value): the whole answer, or its fenced block, must be JSON."""
    try:
        return True, json.loads(strip_fence(text).strip())
    except (ValueError, RecursionError):
        return False, None


@functools.lru_cache(maxsize=64)
def _call_validator(tool_json: str):
    from jsonschema import Draft202012Validator

    tool = json.loads(tool_json)
    schema = {"type": "object", "required": ["name", "arguments"],
              "properties": {"name": {"const": tool["name"]}, "arguments": tool["parameters"]}}
    return Draft202012Validator(schema)


def score_tool_call(pred: str, meta: dict) -> ToolCallScore:
    expected, tool = meta["expected_call"], meta["tool_schema"]
    valid, call = parse_call(pred)
    if not isinstance(call, dict):
        return ToolCallScore(valid, False, False, 0.0, False)
    args = call.get("arguments")
    want = expected["arguments"]
    same = [isinstance(args, dict) and k in args and _canon(args[k]) == _canon(v)
            for k, v in want.items()]
    return ToolCallScore(
        valid_json=valid, name_ok=call.get("name") == expected["name"],
        args_exact=isinstance(args, dict) and _canon(args) == _canon(want),
        args_match=sum(same) / max(len(same), 1),
        schema_valid=_call_validator(_canon(tool)).is_valid(call))


def tool_call(pred: str, golds: list[str], meta: dict) -> float:
    return score_tool_call(pred, meta).acc


METRICS = {"pass_at_1": pass_at_1, "tool_call": tool_call}
