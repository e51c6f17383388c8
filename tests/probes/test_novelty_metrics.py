"""Geometric and predictive novelty metrics against values computed by hand."""

import math

import numpy as np
import pytest

from kv_transition.probes.metrics import (cosine_novelty, entropy_gradient, l2_novelty,
                                          logprob_and_entropy, mahalanobis_novelty,
                                          projection_residual, trailing_windows)

E1, E2, E3 = np.eye(3)


def step_series(n_before=20, n_after=10):
    """e1 for n_before positions, then e2: one jump in direction."""
    return np.array([E1] * n_before + [E2] * n_after)


def test_trailing_window_excludes_the_current_position():
    x = np.arange(6.0)[:, None]
    hist, cur = trailing_windows(x, 3)
    assert hist[:, :, 0].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert cur[:, 0].tolist() == [3, 4, 5]


def test_cosine_novelty_of_a_jump():
    nov = cosine_novelty(step_series(), window=16)
    assert np.isnan(nov[:16]).all()  # no full window yet
    assert np.allclose(nov[16:20], 0.0)  # the same vector as its window
    assert nov[20] == pytest.approx(1.0)  # orthogonal to the window mean e1
    # window = 15 e1 + 1 e2: cos(e2, mean) = 1 / sqrt(15^2 + 1)
    assert nov[21] == pytest.approx(1 - 1 / math.sqrt(226))
    assert nov[21] < nov[20] and nov[22] < nov[21]


def test_cosine_novelty_of_a_zero_vector_is_undefined():
    x = np.array([E1] * 4 + [np.zeros(3)])
    assert np.isnan(cosine_novelty(x, window=4)[4])


def test_l2_novelty_of_a_jump():
    nov = l2_novelty(step_series(), window=16)
    assert nov[20] == pytest.approx(math.sqrt(2))
    assert nov[21] == pytest.approx(15 * math.sqrt(2) / 16)  # e2 - (15 e1 + e2)/16


def test_projection_residual_inside_and_outside_the_window_span():
    x = np.array([E1, E2] * 8 + [E1 + E2, E3, 2 * E1 + E3])
    res = projection_residual(x, window=16, energy=1.0)
    assert res[16] == pytest.approx(0.0, abs=1e-9)  # in span(e1, e2)
    # position 17's window still spans e1, e2 only (it includes e1+e2)
    assert res[17] == pytest.approx(1.0)
    # position 18's window holds e1, e2 and e3: everything is inside it
    assert res[18] == pytest.approx(0.0, abs=1e-9)


def test_projection_energy_cut_drops_weak_directions():
    window = [E1] * 15 + [0.1 * E2]  # energies 15 and 0.01
    x = np.array(window + [E2])
    assert projection_residual(x, 16, energy=0.9)[16] == pytest.approx(1.0)  # only e1 kept
    assert projection_residual(x, 16, energy=1.0)[16] == pytest.approx(0.0, abs=1e-9)
    half = np.array(window + [E1 + E2])
    assert projection_residual(half, 16, energy=0.9)[16] == pytest.approx(1 / math.sqrt(2))


def test_mahalanobis_one_dimension_is_a_z_score():
    window = np.array([1.0, -1.0] * 16)  # mean 0, population variance 1
    x = np.concatenate([window, [3.0]])[:, None]
    assert mahalanobis_novelty(x, window=32)[32] == pytest.approx(3.0, rel=1e-5)


def test_mahalanobis_diagonal_above_the_dimension_threshold():
    a = np.array([1.0, -1.0] * 16)
    b = np.array([2.0, 2.0, -2.0, -2.0] * 8)  # independent of a, variance 4
    x = np.vstack([np.column_stack([a, b]), [[1.0, 2.0]]])
    d = mahalanobis_novelty(x, window=32, diag_above=1, shrinkage=0.1)[32]
    # regularized variances: 0.9 * [1, 4] + 0.1 * mean([1, 4]) = [1.15, 3.85]
    assert d == pytest.approx(math.sqrt(1 / 1.15 + 4 / 3.85), rel=1e-5)


def test_mahalanobis_full_covariance_sees_correlation():
    a = np.array([1.0, -1.0] * 16)
    window = np.column_stack([a, a])  # perfectly correlated: cov [[1, 1], [1, 1]]
    against = mahalanobis_novelty(np.vstack([window, [[1.0, -1.0]]]), 32, 32, 0.1)[32]
    along = mahalanobis_novelty(np.vstack([window, [[1.0, 1.0]]]), 32, 32, 0.1)[32]
    # shrunk covariance [[1, .9], [.9, 1]]: x^T S^-1 x = (2 ± 1.8) / 0.19
    assert against == pytest.approx(math.sqrt(3.8 / 0.19), rel=1e-4)
    assert along == pytest.approx(math.sqrt(0.2 / 0.19), rel=1e-4)
    # the diagonal form cannot tell the two apart
    diag = [mahalanobis_novelty(np.vstack([window, [p]]), 32, 1, 0.1)[32]
            for p in ([1.0, -1.0], [1.0, 1.0])]
    assert diag[0] == pytest.approx(diag[1])


def test_constant_series_has_zero_novelty_everywhere():
    x = np.tile([0.3, -1.2, 2.0], (40, 1))
    for nov in (cosine_novelty(x, 16), l2_novelty(x, 16)):
        assert np.allclose(nov[16:], 0.0, atol=1e-12)
    assert np.allclose(projection_residual(x, 16)[16:], 0.0, atol=1e-6)


def test_logprob_and_entropy_by_hand():
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -np.inf, -np.inf]])
    lp, ent = logprob_and_entropy(np.nan_to_num(logits, neginf=-1e9), np.array([2, 1]))
    assert lp[0] == pytest.approx(-math.log(4))
    assert ent[0] == pytest.approx(math.log(4))
    assert lp[1] == pytest.approx(math.log(0.75))
    assert ent[1] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_entropy_gradient():
    g = entropy_gradient(np.array([1.0, 3.0, 2.0]))
    assert np.isnan(g[0]) and g[1:].tolist() == [2.0, -1.0]
