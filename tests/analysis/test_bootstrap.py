import math

import numpy as np
import pytest

from kv_transition.analysis.bootstrap import bootstrap_ci, paired_diff_ci


def test_empty_is_nan_and_single_value_is_degenerate():
    low, high = bootstrap_ci([], 500, 0.95, 0)
    assert math.isnan(low) and math.isnan(high)
    assert bootstrap_ci([0.7], 500, 0.95, 0) == (0.7, 0.7)


def test_ci_brackets_the_mean_and_is_reproducible():
    values = [1, 1, 0, 1, 0, 1, 1, 0, 1, 1]
    low, high = bootstrap_ci(values, 2000, 0.95, seed=3)
    assert low < np.mean(values) < high
    assert 0.0 <= low and high <= 1.0
    assert bootstrap_ci(values, 2000, 0.95, seed=3) == (low, high)


def test_seed_drives_the_resampling():
    values = np.random.default_rng(0).random(25)
    same = [bootstrap_ci(values, 500, 0.95, seed=[0, 1, 2]) for _ in range(2)]
    assert same[0] == same[1]
    assert bootstrap_ci(values, 500, 0.95, seed=3) != bootstrap_ci(values, 500, 0.95, seed=4)


def test_wider_level_gives_wider_interval():
    values = np.random.default_rng(0).normal(size=40)
    low90, high90 = bootstrap_ci(values, 2000, 0.90, 0)
    low99, high99 = bootstrap_ci(values, 2000, 0.99, 0)
    assert low99 < low90 and high99 > high90


def test_constant_sample_has_zero_width():
    assert bootstrap_ci([0.5] * 8, 300, 0.95, 0) == (0.5, 0.5)


def test_paired_diff_uses_pairs_not_independent_means():
    # b is a plus a shared large per-example effect: paired differences are all exactly -1
    rng = np.random.default_rng(1)
    a = rng.normal(scale=10, size=30)
    low, high = paired_diff_ci(a, a + 1.0, 1000, 0.95, 0)
    assert low == pytest.approx(-1.0) and high == pytest.approx(-1.0)


def test_paired_diff_rejects_unequal_lengths():
    with pytest.raises(ValueError):
        paired_diff_ci([1, 0], [1], 100, 0.95, 0)
