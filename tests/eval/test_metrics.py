import pytest

from kv_transition.errors import BadInput
from kv_transition.eval.metrics import (
    METRICS, classification_score, code_sim_score, count_score, exact_match, f1_score,
    normalize_answer, retrieval_score, rouge_l, score_prediction, string_match_all,
    string_match_part,
)


def test_normalize_answer_squad_rules():
    assert normalize_answer("  The Eiffel-Tower, an  icon!") == "eiffeltower icon"
    assert normalize_answer("theatre a") == "theatre"  # articles only as whole words


def test_exact_match_is_normalized_and_best_over_golds():
    assert exact_match("the Eiffel Tower!", ["Eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel tower"]) == 0.0
    assert exact_match("Paris", ["London", "paris."]) == 1.0


def test_f1_partial_overlap_by_hand():
    # pred -> [cat, sat, on, mat], gold -> [cat, on, mat]: P = 3/4, R = 1, F1 = 6/7
    assert f1_score("the cat sat on the mat", ["a cat on a mat"]) == pytest.approx(6 / 7)
    assert f1_score("the cat sat on the mat", ["dog", "a cat on a mat"]) == pytest.approx(6 / 7)
    assert f1_score("dog", ["cat"]) == 0.0


def test_string_match_all_and_part():
    golds = ["1234567", "2345678", "3456789", "4567890"]
    pred = "They are 1234567 and 3456789."
    assert string_match_all(pred, golds) == 0.5
    assert string_match_part(pred, golds) == 1.0
    assert string_match_all("ALPHA, bravo", ["alpha", "BRAVO"]) == 1.0
    assert string_match_part("none", golds) == 0.0


def test_rouge_l_from_a_hand_computed_lcs():
    # [police, killed, gunman] vs [gunman, was, killed, by, police]: LCS 1, P 1/3, R 1/5
    assert rouge_l("police killed the gunman", ["the gunman was killed by police"]) == \
        pytest.approx(0.25)
    # [cat, sat, on, mat] vs [cat, lay, on, mat]: LCS 3 -> P = R = F = 3/4
    assert rouge_l("the cat sat on the mat", ["the cat lay on the mat"]) == pytest.approx(0.75)
    assert rouge_l("", ["anything"]) == 0.0


def test_classification_splits_credit_among_named_classes():
    classes = ["Location", "Person", "Number"]
    assert classification_score("Location or Person", "Location", classes) == 0.5
    assert classification_score("Person", "Location", classes) == 0.0
    # "location" is a strict substring of the gold, so it does not dilute the credit
    assert classification_score("Other location", "Other location",
                                ["location", "Other location"]) == 1.0


def test_retrieval_and_count():
    assert retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert retrieval_score("Paragraph 3 or Paragraph 5", "Paragraph 3") == 0.5
    assert retrieval_score("I do not know", "Paragraph 3") == 0.0
    assert count_score("There are 4 unique paragraphs.", "4") == 1.0
    assert count_score("4 or 14", "4") == 0.5


def test_code_sim_skips_fences_and_comments():
    pred = "```python\n# the next line\nreturn x + 1\n```"
    assert code_sim_score(pred, "return x + 1") == 1.0
    assert code_sim_score("abcd", "abce") == 0.75  # 2 * 3 matching / 8 chars


def test_score_prediction_for_ruler():
    r = score_prediction("The numbers are 1234567.", ["1234567", "7654321"], "ruler_all")
    assert (r.acc, r.em) == (0.5, 0.0)
    assert r.f1 == pytest.approx(0.5)  # [numbers, are, 1234567] vs [1234567]: P 1/3, R 1
    assert r.pred_norm == "numbers are 1234567"
    assert r.gold_norm == "1234567 | 7654321"


def test_score_prediction_uses_the_task_metric_and_first_line_rule():
    meta = {"task": "trec", "all_classes": ["Location", "Person"]}
    assert score_prediction("Location\nPerson", ["Location"], "classification", meta).acc == 1.0
    meta["task"] = "qasper"  # no first-line rule: both classes named
    assert score_prediction("Location\nPerson", ["Location"], "classification", meta).acc == 0.5
    r = score_prediction("Ann wrote it", ["Ann"], "qa_f1", {"task": "hotpotqa"})
    assert r.acc == r.f1 == pytest.approx(0.5)


def test_unknown_and_unsupported_metrics_are_bad_input():
    with pytest.raises(BadInput, match="unknown metric 'bleu'.*ruler_all"):
        score_prediction("x", ["x"], "bleu")
    with pytest.raises(BadInput, match="jieba"):
        score_prediction("x", ["x"], "qa_f1_zh")
    with pytest.raises(BadInput, match="all_classes"):
        score_prediction("x", ["x"], "classification", {"task": "trec"})


def test_every_longbench_metric_has_a_scorer():
    from kv_transition.data.longbench import TASK_METRICS

    assert set(TASK_METRICS.values()) <= set(METRICS)
