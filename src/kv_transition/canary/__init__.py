"""The functional canary (issue 5): does perplexity warn you when function breaks?

One home for a feature every phase touches. ``task`` pairs the data source with its scorers;
``source`` builds the examples (code and tool-call answers to synthetic needles, HumanEval) and
the held-out texts; ``score`` writes the ``functional_scores`` rows in the score phase;
``perplexity`` measures held-out perplexity under every setting in the run phase; ``sds`` turns
both into the Silent Degradation Score, its chart and its report section. The scorers
themselves (pass@1 in the sandbox, tool-call checks) are metrics in ``eval/functional.py``.
"""
