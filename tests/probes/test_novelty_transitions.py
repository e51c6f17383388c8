"""Semantic transitions from token text, and the hypotheses verdicts on synthetic statistics."""

import pytest

from kv_transition.probes.hypotheses import (at_transitions, autocorrelated, bursty,
                                             heavy_tails, policy_links)
from kv_transition.probes.transitions import line_class, token_pieces, transition_mask


def test_line_classes():
    assert line_class("def reverse(s: str) -> str:") == "code"
    assert line_class("    return s[::-1]") == "code"
    assert line_class("from typing import Any") == "code"
    assert line_class("from the evaporator the heat flows out") == "prose"
    assert line_class("```python") == "fence"
    assert line_class("If the train leaves at 9:40, it arrives later.") == "prose"


def test_transitions_at_paragraphs_and_code_prose_switches():
    pieces = ["Rain", " forms", ".", "\n", "\n",           # 0-4: paragraph 1
              "Mix", " flour", ".", "\n",                  # 5: after a blank line
              "def", " f", "():", "\n",                    # 9: prose -> code
              "    ", "return", " 1", "\n",                # 13: still code
              "Back", " to", " prose"]                     # 17: code -> prose
    assert transition_mask(pieces).nonzero()[0].tolist() == [5, 9, 17]


def test_no_transition_in_one_prose_paragraph():
    assert not transition_mask(["One", " line", " of", " prose", "."]).any()


class _Tok:
    """A tokenizer whose pieces depend on the left context, like SentencePiece."""

    words = {1: "a", 2: "b", 3: "\n"}

    def decode(self, ids, **_):
        return " ".join(self.words[i] for i in ids)


def test_token_pieces_keep_spacing_from_context():
    pieces = token_pieces(_Tok(), [1, 2, 3, 1])
    assert "".join(pieces) == "a b \n a"


def _row(**kw):
    base = dict(metric="cosine", head=-1, layer=0, n=100, kurtosis=1.0, skew=0.5,
                burstiness=0.2, uniformity_p=0.01, n_transitions=0, transition_hits=None,
                transition_expected=None, n_spikes=4, acf_lag1=0.5, acf_band=0.2)
    return {**base, **kw}


def test_verdicts_follow_the_numbers():
    assert heavy_tails([_row(), _row(kurtosis=2.0)]).verdict == "supported"
    assert heavy_tails([_row(kurtosis=-0.5, skew=0.1)] * 2).verdict == "weakened"
    assert heavy_tails([_row(n=10)]).verdict == "inconclusive"
    assert bursty([_row(burstiness=-1.0)]).verdict == "weakened"
    assert bursty([_row(burstiness=None)]).verdict == "inconclusive"
    assert autocorrelated([_row(acf_lag1=0.05)]).verdict == "weakened"
    assert autocorrelated([_row()]).verdict == "supported"


def test_transition_verdict_pools_spikes():
    assert at_transitions([_row()]).verdict == "inconclusive"  # no transitions at all
    hits = _row(n_transitions=3, n_spikes=10, transition_hits=8, transition_expected=1.0)
    supported = at_transitions([hits])
    assert supported.verdict == "supported" and "8 of 10 spikes" in supported.evidence
    misses = _row(n_transitions=3, n_spikes=10, transition_hits=0, transition_expected=1.0)
    assert at_transitions([misses]).verdict == "weakened"


def test_policy_links_pool_units():
    rows = [dict(metric="cosine", head=-1, kv_policy="snapkv", kv_budget=0.5,
                 kept_frac_all=0.5, kept_frac_high=h, spearman_rho=rho, spearman_p=p)
            for h, rho, p in ((0.2, -0.3, 0.01), (0.4, -0.1, 0.5))]
    rows.append({**rows[0], "head": 0})  # per-head rows are not pooled
    (link,) = policy_links(rows, "cosine")
    assert (link.n_units, link.n_significant) == (2, 1)
    assert link.kept_high == pytest.approx(0.3) and link.ratio == pytest.approx(0.6)
    assert link.rho == pytest.approx(-0.2)
