import numpy as np
import pytest
from scipy.stats import binom, binomtest

from kv_transition.analysis import intervals as iv
from kv_transition.analysis.multiplicity import adjust, holm


@pytest.mark.parametrize("k,n", [(0, 12), (11, 12), (12, 12), (27, 30), (50, 100)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert iv.wilson(k / n, n) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_all_right_bin_is_not_a_single_point():
    got = iv.mean_interval([1.0] * 12)
    assert got.method == "wilson" and got.high == 1.0
    assert got.low < 0.8  # 12/12 is compatible with p = 0.97 and well below


@pytest.mark.parametrize("n,p", [(12, 0.97), (30, 0.97), (100, 0.9), (30, 0.5)])
def test_exact_coverage_is_near_nominal(n, p):
    covered = 0.0
    for k in range(n + 1):
        got = iv.mean_interval([1.0] * k + [0.0] * (n - k))
        covered += binom.pmf(k, n, p) * (got.low <= p <= got.high)
    assert 0.93 <= covered <= 0.975


def test_shared_contexts_widen_the_interval():
    values = [1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0]
    iid = iv.mean_interval(values)
    # three contexts, four questions each, answered alike within a context
    clustered = iv.mean_interval([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1],
                                 clusters=[0] * 4 + [1] * 4 + [2] * 4)
    assert clustered.method == "wilson_clustered"
    assert clustered.high - clustered.low > iid.high - iid.low + 0.2


def test_continuous_scores_use_bca_and_constant_ones_a_bound():
    rng = np.random.default_rng(0)
    f1 = rng.beta(5, 2, size=40)
    got = iv.mean_interval(f1, n_boot=500, seed=1)
    assert got.method == "bca_bootstrap" and got.low < f1.mean() < got.high
    assert iv.mean_interval(f1, n_boot=500, seed=1) == got  # seeded
    const = iv.mean_interval([0.8] * 10)
    assert const.method == "wilson_bound" and const.low < 0.8 < const.high


def test_mcnemar_and_bonett_price():
    # 6 losses, 0 gains out of 30: exact two-sided p = 2 * 0.5**6
    res = iv.paired_difference([0] * 6 + [1] * 24, [1] * 30)
    assert res.test == "mcnemar_exact" and res.p == pytest.approx(2 * 0.5 ** 6)
    assert res.ci_method == "bonett_price" and res.low < -0.2 < res.high < 0
    same = iv.paired_difference([1] * 12, [1] * 12)
    assert same.p == 1.0 and same.low < -0.05 and same.high > 0.05


def test_paired_continuous_uses_sign_flip():
    rng = np.random.default_rng(2)
    full = rng.uniform(0.5, 1, size=20)
    res = iv.paired_difference(full - 0.2, full, n_boot=999, seed=0)
    assert res.test == "sign_flip_permutation" and res.p < 0.01
    assert res.delta == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        iv.paired_difference([1, 0], [1])


def test_holm_and_bh():
    p = [0.01, 0.04, 0.03, 0.2]
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert adjust(p, "bh") == pytest.approx([0.04, 0.0533333, 0.0533333, 0.2], abs=1e-6)
    assert adjust([], "holm") == []
