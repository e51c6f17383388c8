"""The canary's data source: code that must run, tool calls that must parse, held-out texts.

Offline families (``dataset.name: functional``), all built on the synthetic generator's
multi-key haystack (four key/value needles, one asked, three distractors), sized in tokens of
the model's own tokenizer like every synthetic task:

- ``code``: "... Answer with a Python function." The answer ``def answer(): return 4985193``
  is run in the sandbox against ``assert answer() == 4985193`` (pass@1).
- ``tool``: "... Answer with a JSON tool call." The answer
  ``{"name": "lookup", "arguments": {"key": "koala", "value": 4985193}}`` is scored for valid
  JSON, function name, arguments (exact and per argument) and the tool's JSON schema.
- ``code_long`` / ``tool_long``: the same, with the asked needle far back (the first fifth of
  the context), where eviction hurts; the plain variants spread it over the whole context.

The wording is exactly the bundled reference model's functional formats
(``reference/formats.py``): the generator's question plus a cue, and an empty answer prefix.
That model is trained without a tool schema in the prompt, so the schema is printed in the
question only when ``dataset.show_tool_schema`` is true (for real models); scoring always
checks it.

``humaneval`` loads HumanEval-format JSONL from ``dataset.path`` (task_id, prompt, test,
entry_point; canonical_solution optional) for real models. ``heldout_documents`` supplies
the texts perplexity is measured on.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable

from kv_transition.data import synthetic
from kv_transition.data.longbench import read_jsonl
from kv_transition.data.normalize import Example
from kv_transition.errors import BadInput, DataError
from kv_transition.reference import formats
from kv_transition.settings import FUNCTIONAL_TASKS, DatasetConfig, PerplexityConfig

FAR_BACK = 0.2  # *_long families: the asked needle lies in the first fifth of the context
RETRIEVAL_FAMILY = "niah_multikey"  # the reference model's formats cover it (and distractors)
HUMANEVAL_FIELDS = ("task_id", "prompt", "test", "entry_point")

# The tool the tool-call tasks ask for; its parameters are a JSON Schema (checked by jsonschema).
TOOL_SCHEMA: dict[str, Any] = {
    "name": formats.TOOL_NAME,
    "description": "Report the special magic number found for a key.",
    "parameters": {
        "type": "object",
        "properties": {"key": {"type": "string"}, "value": {"type": "integer"}},
        "required": ["key", "value"],
        "additionalProperties": False,
    },
}


def _family_format(family: str) -> str:
    return formats.PYTHON if family.startswith("code") else formats.JSON


def _depths(family: str, n: int, target: int, seed: int) -> list[float]:
    """Evenly spaced depths in a seeded order: over the whole context, or the far-back fifth."""
    span = FAR_BACK if family.endswith("_long") else 1.0
    order = list(range(n))
    random.Random(f"{seed}-functional-{family}-{target}-depths").shuffle(order)
    return [span * (k + 0.5) / n for k in order]


def _asked(example: Example) -> tuple[str, str]:
    """(key, value) the generator's multi-key example asks for (its first needle)."""
    value = example.answers[0]
    key = example.question.split(" for ", 1)[1].split(" mentioned", 1)[0]
    return key, value


def _question(base: Example, fmt: str, show_schema: bool) -> str:
    question = formats.functional_question(base.question, fmt)
    if fmt == formats.JSON and show_schema:
        schema = json.dumps(TOOL_SCHEMA, separators=(", ", ": "))
        question = f"{base.question} Tool: {schema} {formats.CUES[fmt]}"
    return question


def _functional_example(family: str, base: Example, show_schema: bool) -> Example:
    fmt = _family_format(family)
    key, value = _asked(base)
    gold = formats.functional_answer(fmt, key, [value], several=False)
    meta = {k: v for k, v in base.meta.items() if k not in ("task", "metric")}
    meta.update({"task": family, "format": fmt, "key": key, "value": int(value)})
    if fmt == formats.PYTHON:
        meta.update({"metric": "pass_at_1", "entry_point": formats.FUNCTION_NAME,
                     "test": f"assert {formats.FUNCTION_NAME}() == {int(value)}\n"})
    else:
        meta.update({"metric": "tool_call", "tool_schema": TOOL_SCHEMA,
                     "expected_call": json.loads(gold)})
    example_id = base.example_id.replace(f"functional-{family}", family, 1)
    return Example(example_id, _question(base, fmt, show_schema), base.context, [gold], meta, "")


def generate_functional(family: str, target_tokens: int, n: int, seed: int,
                        count_tokens: Callable[[str], int],
                        show_schema: bool = False) -> list[Example]:
    """``n`` examples of one offline family (or "mix": example i is FUNCTIONAL_TASKS[i % 4])."""
    if family != "mix" and family not in FUNCTIONAL_TASKS:
        raise BadInput(f"unknown functional task {family!r}; allowed: "
                       f"{', '.join(FUNCTIONAL_TASKS)}, mix, humaneval")
    families = [FUNCTIONAL_TASKS[i % len(FUNCTIONAL_TASKS)] if family == "mix" else family
                for i in range(n)]
    out = []
    for fam in dict.fromkeys(families):
        idx = [i for i, f in enumerate(families) if f == fam]
        depths = _depths(fam, len(idx), target_tokens, seed)
        for i, depth in zip(idx, depths):
            # the generator's per-example builder: it takes a depth, which "far back" needs
            base = synthetic.make_example(f"functional-{fam}", RETRIEVAL_FAMILY, i, target_tokens,
                                      seed, round(depth, 6), count_tokens)
            out.append(_functional_example(fam, base, show_schema))
    return sorted(out, key=lambda ex: int(ex.example_id.rsplit("-", 1)[1]))  # generation order


def load_functional(cfg: DatasetConfig, n_bins: int,
                    count_tokens: Callable[[str], int]) -> list[Example]:
    """The candidates ``prepare`` bins: offline families at every length, or HumanEval."""
    if cfg.task == "humaneval":
        if cfg.path is None:
            raise BadInput("dataset.task 'humaneval' needs dataset.path: a local HumanEval "
                           "JSONL file (task_id, prompt, test, entry_point per line)")
        return load_humaneval(cfg.path)
    n_each = cfg.candidates_per_length(n_bins)
    return [ex for target in cfg.lengths
            for ex in generate_functional(cfg.task, target, n_each, cfg.seed, count_tokens,
                                          cfg.show_tool_schema)]


# ---------------------------------------------------------------- HumanEval

def _humaneval_record(record: Any, where: str, line: int) -> dict[str, str]:
    if not isinstance(record, dict):
        raise DataError(where, line, f"expected a JSON object, got {type(record).__name__}")
    for name in HUMANEVAL_FIELDS:
        if name not in record:
            raise DataError(where, line, f"missing field {name!r}; each record needs "
                            f"{', '.join(HUMANEVAL_FIELDS)}")
        if not isinstance(record[name], str) or not record[name].strip():
            raise DataError(where, line, f"field {name!r} must be a non-empty string")
    if not record["entry_point"].isidentifier():
        raise DataError(where, line, f"field 'entry_point' {record['entry_point']!r} is not a "
                        "Python identifier")
    solution = record.get("canonical_solution")
    if solution is not None and not isinstance(solution, str):
        raise DataError(where, line, "field 'canonical_solution' must be a string or absent")
    return record


def _humaneval_example(record: dict[str, str]) -> Example:
    entry = record["entry_point"]
    question = (f"Complete the Python function {entry} above. Reply with the whole function "
                "in a Python code block.")
    meta = {"task": "humaneval", "metric": "pass_at_1", "format": formats.PYTHON,
            "entry_point": entry, "prompt": record["prompt"], "test": record["test"],
            "check": True, "source_id": record["task_id"]}
    answers = [record["canonical_solution"]] if record.get("canonical_solution") else []
    # the prompt is code: it is the context (what compression may evict) and kept verbatim
    return Example(record["task_id"], question, record["prompt"], answers, meta, "")


def load_humaneval(path: str) -> list[Example]:
    """Every record of a HumanEval-format JSONL file, in file order; DataError names the line."""
    file = Path(path)
    if not file.is_file():
        raise DataError(path, None, "no such file; expected a HumanEval-format .jsonl file "
                        f"(fields {', '.join(HUMANEVAL_FIELDS)})")
    out, seen = [], {}
    for line, record in read_jsonl(file):
        rec = _humaneval_record(record, path, line)
        if rec["task_id"] in seen:
            raise DataError(path, line, f"duplicate task_id {rec['task_id']!r} (first on "
                            f"line {seen[rec['task_id']]})")
        seen[rec["task_id"]] = line
        out.append(_humaneval_example(rec))
    if not out:
        raise DataError(path, None, "no records; expected one JSON object per line with "
                        f"fields {', '.join(HUMANEVAL_FIELDS)}")
    return out


# ---------------------------------------------------------------- held-out texts

def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _synthetic_documents(cfg: PerplexityConfig,
                         count_tokens: Callable[[str], int]) -> list[tuple[str, str]]:
    """Haystacks of the task distribution (filler with key/value needles), one per window.

    Sized a little above prefix + continuation so the split never runs short; the
    continuation is ordinary filler and needles, the text a language model is usually scored on.
    """
    target = cfg.prefix_tokens + cfg.continuation_tokens + 16
    docs = []
    for i in range(cfg.n_texts):
        depth = (i + 0.5) / cfg.n_texts
        ex = synthetic.make_example("heldout", RETRIEVAL_FAMILY, i, target, cfg.seed, depth,
                                count_tokens)
        docs.append((f"heldout-{i}", ex.context))
    return docs


def _file_documents(path: str) -> list[tuple[str, str]]:
    """A .jsonl file with a "text" field per line, or any other file as one UTF-8 text."""
    file = Path(path)
    if not file.is_file():
        raise DataError(path, None, "no such file; canary.perplexity.path must be a .jsonl "
                        "file with a \"text\" field per line or a plain UTF-8 text file")
    if file.suffix != ".jsonl":
        try:
            return [(file.stem, file.read_text(encoding="utf-8"))]
        except UnicodeDecodeError:
            raise DataError(path, None, "not valid UTF-8 text") from None
    docs = []
    for line, record in read_jsonl(file):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(path, line, "expected a JSON object with a string field \"text\"")
        docs.append((f"line{line}", record["text"]))
    if not docs:
        raise DataError(path, None, "no records; expected one JSON object per line with a "
                        "\"text\" field")
    return docs


def heldout_documents(cfg: PerplexityConfig,
                      count_tokens: Callable[[str], int]) -> list[tuple[str, str]]:
    """(document id, text) pairs the perplexity windows are cut from, in a fixed order."""
    return _file_documents(cfg.path) if cfg.path else _synthetic_documents(cfg, count_tokens)
