"""Spikes, burstiness, autocorrelation, tails, uniformity and transition enrichment by hand."""

import math

import numpy as np
import pytest
from scipy import stats

from kv_transition.probes.metrics import cosine_novelty
from kv_transition.probes.temporal import (autocorrelation, burstiness, detect_spikes,
                                           near_transitions, spike_uniformity_p, summarize,
                                           tail_shape, transition_enrichment)


def test_constant_series_has_no_spikes_and_no_moments():
    y = np.full(60, 0.7)
    assert detect_spikes(y).size == 0
    s = summarize(y, np.zeros(60, bool))
    assert s.spikes == [] and math.isnan(s.burstiness) and math.isnan(s.kurtosis)
    assert np.isnan(s.acf).all()


def test_single_outlier_is_one_spike():
    y = np.zeros(20)
    y[7] = 5.0
    assert detect_spikes(y, k=2.0).tolist() == [7]


def test_single_jump_in_the_vectors_gives_one_spike():
    e1, e2 = np.eye(2)
    x = np.array([e1] * 40 + [e2] * 40)
    novelty = cosine_novelty(x, window=16)  # jumps to 1 at 40, then decays over 16 positions
    assert detect_spikes(novelty, k=2.0, merge=3).tolist() == [40]


def test_nearby_spikes_merge_at_their_maximum():
    y = np.zeros(40)
    y[10], y[12], y[30] = 5.0, 6.0, 5.5
    assert detect_spikes(y, k=2.0, merge=3).tolist() == [12, 30]
    assert detect_spikes(y, k=2.0, merge=1).tolist() == [10, 12, 30]


def test_nan_positions_are_never_spikes():
    y = np.array([np.nan] * 5 + [0.0] * 20 + [9.0])
    assert detect_spikes(y).tolist() == [25]


def test_periodic_spikes_have_burstiness_minus_one():
    y = np.zeros(100)
    y[5::10] = 5.0
    spikes = detect_spikes(y)
    assert spikes.tolist() == list(range(5, 100, 10))
    assert burstiness(np.diff(spikes)) == pytest.approx(-1.0)


def test_clustered_spikes_are_bursty():
    intervals = np.array([5, 5, 45, 5, 5])  # mean 13, population std 16
    assert burstiness(intervals) == pytest.approx(3 / 29)


def test_burstiness_needs_two_intervals():
    assert math.isnan(burstiness(np.array([7])))


def test_autocorrelation_of_an_alternating_series():
    y = np.array([1.0, -1.0] * 10)
    acf = autocorrelation(y, max_lag=50)
    assert len(acf) == 20  # lags 0..n-1 when n - 1 < max_lag
    assert acf[0] == pytest.approx(1.0)
    assert acf[1] == pytest.approx(-19 / 20)
    assert acf[2] == pytest.approx(18 / 20)


def test_tail_shape_by_hand_and_against_scipy():
    kurt, skew = tail_shape(np.array([0.0, 0.0, 0.0, 1.0]))
    assert skew == pytest.approx(0.09375 / 0.1875 ** 1.5)
    assert kurt == pytest.approx(0.08203125 / 0.1875 ** 2 - 3)
    y = np.random.default_rng(0).standard_exponential(500)
    kurt, skew = tail_shape(y)
    assert kurt == pytest.approx(stats.kurtosis(y)) and skew == pytest.approx(stats.skew(y))
    assert kurt > 0 and skew > 0  # an exponential has a heavy right tail


def test_uniformity_of_spike_positions():
    even = np.arange(5, 100, 10)
    clumped = np.array([0, 1, 2, 3, 4, 5])
    assert spike_uniformity_p(even, 100) > 0.5
    assert spike_uniformity_p(clumped, 100) < 0.01
    assert math.isnan(spike_uniformity_p(np.array([3, 9]), 100))


def test_transition_enrichment_by_hand():
    transitions = np.zeros(100, bool)
    transitions[[10, 50]] = True
    near = near_transitions(transitions, radius=2)
    assert near.sum() == 10 and near[8:13].all() and not near[13]
    e = transition_enrichment(np.array([10, 51, 80]), transitions, radius=2)
    assert (e.n_transitions, e.hits) == (2, 2)
    assert e.expected == pytest.approx(0.3)
    # P(X >= 2) for X ~ Binomial(3, 0.1)
    assert e.p_value == pytest.approx(3 * 0.01 * 0.9 + 0.001)


def test_no_transitions_means_no_enrichment():
    e = transition_enrichment(np.array([3, 9]), np.zeros(20, bool))
    assert e.n_transitions == 0 and e.hits is None and e.p_value is None
