"""Answer metrics: SQuAD EM/F1, RULER string match, and LongBench's task metrics.

All are pure functions of strings returning a score in [0, 1]. ``METRICS`` maps the names that
task sources put in ``meta["metric"]`` to scorers taking (prediction, golds, meta); LongBench
scores each gold separately and keeps the best, RULER scores all golds at once.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from kv_transition.errors import BadInput
from kv_transition.eval import functional

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD/LongBench normalization: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _token_f1(pred: list[str], gold: list[str]) -> float:
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, golds: list[str]) -> float:
    norm = normalize_answer(pred)
    return max((float(norm == normalize_answer(g)) for g in golds), default=0.0)


def f1_score(pred: str, golds: list[str]) -> float:
    """Token F1 of the normalized strings, best over golds (LongBench's qa_f1_score too)."""
    tokens = normalize_answer(pred).split()
    return max((_token_f1(tokens, normalize_answer(g).split()) for g in golds), default=0.0)


qa_f1 = f1_score


def string_match_all(pred: str, golds: list[str]) -> float:
    """RULER: the fraction of gold strings found (case-insensitive) anywhere in the prediction."""
    if not golds:
        return 0.0
    low = pred.lower()
    return sum(g.lower() in low for g in golds) / len(golds)


def string_match_part(pred: str, golds: list[str]) -> float:
    """RULER (QA tasks): 1.0 if any gold string occurs in the prediction."""
    low = pred.lower()
    return float(any(g.lower() in low for g in golds))


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)  # one rolling row: memory O(len(b))
    for x in a:
        diag = 0
        for j, y in enumerate(b, start=1):
            diag, row[j] = row[j], diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(pred: str, golds: list[str]) -> float:
    """ROUGE-L F1 from the LCS of normalized tokens, best over golds.

    LongBench calls the ``rouge`` package on raw text; this is the same LCS statistic without
    the extra dependency, on normalized tokens, with the plain F1 of LCS precision and recall.
    """
    tokens = normalize_answer(pred).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        lcs = _lcs(tokens, ref) if tokens and ref else 0
        if lcs:
            precision, recall = lcs / len(tokens), lcs / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def classification_score(pred: str, gold: str, all_classes: list[str]) -> float:
    """LongBench: credit split among the class names the prediction mentions.

    A class name that is a strict substring of the gold (e.g. "location" in "other location")
    is dropped first so naming the gold is not punished for containing it. LongBench removes
    these while iterating over the same list, which can skip one; this is the intended rule.
    """
    matches = [c for c in all_classes if c in pred]
    matches = [m for m in matches if not (m in gold and m != gold)]
    return 1.0 / len(matches) if gold in matches else 0.0


def _id_share(pred: str, wanted: str | None) -> float:
    """Fraction of the numbers in ``pred`` that equal ``wanted`` (LongBench's count/retrieval)."""
    numbers = re.findall(r"\d+", pred)
    if not numbers or wanted is None:
        return 0.0
    return sum(n == wanted for n in numbers) / len(numbers)


def retrieval_score(pred: str, gold: str, pattern: str = r"Paragraph (\d+)") -> float:
    """LongBench passage retrieval: the gold names "Paragraph N"; numbers in pred must be N."""
    found = re.findall(pattern, gold)
    return _id_share(pred, found[0] if found else None)  # a gold without an id scores 0


def count_score(pred: str, gold: str) -> float:
    """LongBench passage_count: the share of numbers in the prediction equal to the gold."""
    return _id_share(pred, str(gold).strip())


def code_sim_score(pred: str, gold: str) -> float:
    """LongBench code completion: similarity of the first line that is code, not chatter.

    LongBench uses fuzzywuzzy's ``fuzz.ratio``; difflib's SequenceMatcher ratio is the
    pure-Python algorithm fuzzywuzzy falls back on, rounded to whole percent like it.
    """
    lines = pred.lstrip("\n").split("\n")
    first = next((ln for ln in lines if "`" not in ln and "#" not in ln and "//" not in ln), "")
    return round(100 * difflib.SequenceMatcher(None, first, gold).ratio()) / 100


def _best(per_gold: Callable[..., float], **kwargs: Any) -> Callable[..., float]:
    """LongBench scores each gold answer alone and keeps the best."""
    return lambda pred, golds, meta: max(
        (per_gold(pred, g, **{k: f(meta) for k, f in kwargs.items()}) for g in golds),
        default=0.0)


def _classes(meta: dict) -> list[str]:
    classes = meta.get("all_classes")
    if not classes:
        raise BadInput("metric 'classification' needs meta['all_classes'] (the class names); "
                       "the example has none")
    return classes


def _needs_jieba(name: str) -> Callable[..., float]:
    def refuse(pred: str, golds: list[str], meta: dict) -> float:
        raise BadInput(f"metric {name!r} segments Chinese with jieba, which is not installed "
                       "and not supported here; choose an English LongBench task")
    return refuse


METRICS: dict[str, Callable[[str, list[str], dict], float]] = {
    "ruler_all": lambda pred, golds, meta: string_match_all(pred, golds),
    "ruler_part": lambda pred, golds, meta: string_match_part(pred, golds),
    "em": lambda pred, golds, meta: exact_match(pred, golds),
    "qa_f1": lambda pred, golds, meta: qa_f1(pred, golds),
    "rouge": lambda pred, golds, meta: rouge_l(pred, golds),
    "classification": _best(classification_score, all_classes=_classes),
    "retrieval": _best(retrieval_score),
    "retrieval_zh": _best(retrieval_score, pattern=lambda meta: r"段落(\d+)"),
    "count": _best(count_score),
    "code_sim": _best(code_sim_score),
    "qa_f1_zh": _needs_jieba("qa_f1_zh"),
    "rouge_zh": _needs_jieba("rouge_zh"),
    "pass_at_1": functional.pass_at_1,  # the functional canary's scorers (canary/task.py)
    "tool_call": functional.tool_call,
}

# LongBench keeps only the first line of the prediction for these few-shot tasks, whose
# models tend to continue with the next made-up example.
FIRST_LINE_TASKS = ("trec", "triviaqa", "samsum", "lsht")


@dataclass
class ScoreResult:
    """One scored response; ``acc`` is the task's primary metric, em/f1 always computed."""

    em: float
    f1: float
    acc: float
    pred_norm: str
    gold_norm: str


def score_prediction(pred: str, answers: list[str], metric: str,
                     meta: dict | None = None) -> ScoreResult:
    if metric not in METRICS:
        raise BadInput(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    meta = meta or {}
    if str(meta.get("task", "")).removesuffix("_e") in FIRST_LINE_TASKS:
        pred = pred.lstrip("\n").split("\n")[0]
    return ScoreResult(
        em=exact_match(pred, answers), f1=f1_score(pred, answers),
        acc=float(METRICS[metric](pred, answers, meta)), pred_norm=normalize_answer(pred),
        gold_norm=" | ".join(normalize_answer(g) for g in answers))
