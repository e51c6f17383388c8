"""LongBench (Bai et al., 2023) loader: a local JSONL file, or the hub through ``datasets``.

Records keep LongBench's fields: ``input`` is the question, ``context`` the long document,
``answers`` the gold strings. ``length`` counts *words* and is only kept in meta: binning uses
the model's tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from kv_transition.data.normalize import Example, clean_text
from kv_transition.errors import BadInput, DataError

# LongBench's dataset2metric. The zh metrics need jieba; eval.metrics says so when asked.
TASK_METRICS = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1",
    "multifieldqa_zh": "qa_f1_zh", "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1",
    "dureader": "rouge_zh", "gov_report": "rouge", "qmsum": "rouge", "multi_news": "rouge",
    "vcsum": "rouge_zh", "trec": "classification", "triviaqa": "qa_f1", "samsum": "rouge",
    "lsht": "classification", "passage_retrieval_en": "retrieval", "passage_count": "count",
    "passage_retrieval_zh": "retrieval_zh", "lcc": "code_sim", "repobench-p": "code_sim",
}
CODE_TASKS = ("lcc", "repobench-p")  # indentation is meaning: never clean their text
REQUIRED_FIELDS = ("input", "context", "answers")


def task_metric(task: str) -> str:
    """The metric LongBench scores ``task`` with; ``<task>_e`` (LongBench-E) maps like ``task``."""
    base = task[:-2] if task.endswith("_e") and task[:-2] in TASK_METRICS else task
    if base not in TASK_METRICS:
        raise BadInput(f"dataset.task: unknown LongBench task {task!r}; allowed: "
                       f"{', '.join(TASK_METRICS)} (or <task>_e for LongBench-E)")
    return TASK_METRICS[base]


def _resolve(task: str, path: str) -> Path:
    """A .jsonl file as given, or ``<dir>/<task>.jsonl`` falling back to ``<task>_e.jsonl``."""
    p = Path(path)
    if p.is_dir():
        for name in (f"{task}.jsonl", f"{task}_e.jsonl"):
            if (p / name).is_file():
                return p / name
        raise DataError(path, None, f"directory holds neither {task}.jsonl nor {task}_e.jsonl; "
                        "set dataset.path to a LongBench .jsonl file or a directory holding one")
    if not p.is_file():
        raise DataError(path, None, "no such file or directory; expected a LongBench .jsonl "
                        f"file or a directory holding {task}.jsonl")
    return p


def read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(1-based line, record) for every non-blank line; DataError names the bad line."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(str(path), line_no, "not valid UTF-8 text") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(str(path), line_no, f"invalid JSON ({exc.msg}); expected one "
                                "JSON object per line") from None
            yield line_no, record


def _check(record: Any, where: str, line: int) -> None:
    """Reject what would break prompting or scoring later, naming the field."""
    if not isinstance(record, dict):
        raise DataError(where, line, f"expected a JSON object, got {type(record).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise DataError(where, line, f"missing field {missing[0]!r}; each record needs "
                        f"{', '.join(REQUIRED_FIELDS)}")
    for name in ("input", "context"):
        if not isinstance(record[name], str):
            raise DataError(where, line, f"field {name!r} must be a string")
    answers = record["answers"]
    if not (isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
        raise DataError(where, line, "field 'answers' must be a non-empty list of strings")
    classes = record.get("all_classes")
    if classes is not None and not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise DataError(where, line, "field 'all_classes' must be a list of strings or null")


def _to_example(task: str, metric: str, record: dict[str, Any], line: int) -> Example:
    keep = (lambda s: s) if task.removesuffix("_e") in CODE_TASKS else clean_text
    source_id = str(record.get("_id") or f"line{line}")
    length = record.get("length")
    meta = {"task": task, "metric": metric, "all_classes": record.get("all_classes"),
            "source_id": source_id, "language": record.get("language"),
            "length_words": length if isinstance(length, int) else len(record["context"].split())}
    return Example(f"{task}-{source_id}", keep(record["input"]), keep(record["context"]),
                   list(record["answers"]), meta, answer_prefix="")


def _examples(task: str, rows: Iterable[tuple[int, Any]], where: str) -> list[Example]:
    metric = task_metric(task)
    out, seen = [], {}
    for line, record in rows:
        _check(record, where, line)
        ex = _to_example(task, metric, record, line)
        if ex.example_id in seen:  # ids key the examples table
            raise DataError(where, line, f"duplicate _id {ex.meta['source_id']!r} "
                            f"(first on line {seen[ex.example_id]})")
        seen[ex.example_id] = line
        out.append(ex)
    if not out:
        raise DataError(where, None, "no records; expected one JSON object per line with "
                        f"fields {', '.join(REQUIRED_FIELDS)}")
    return out


def _from_hub(task: str) -> list[Example]:
    try:
        import datasets  # lazy: slow to import and only needed without a local file

        rows = datasets.load_dataset("THUDM/LongBench", task, split="test")
    except Exception as exc:  # offline, unknown config, script datasets unsupported...
        raise BadInput(
            f"dataset.path is unset and LongBench {task!r} could not be loaded from the hub "
            f"({type(exc).__name__}: {exc}); download {task}.jsonl and set dataset.path to "
            "the file or its directory") from None
    return _examples(task, ((i, dict(r)) for i, r in enumerate(rows, start=1)),
                     f"THUDM/LongBench:{task}")


def load_longbench(task: str, path: str | None) -> list[Example]:
    """Every record of LongBench ``task`` as an Example, in file order."""
    task_metric(task)  # unknown task fails before any I/O
    if path is None:
        return _from_hub(task)
    file = _resolve(task, path)
    return _examples(task, read_jsonl(file), str(file))
