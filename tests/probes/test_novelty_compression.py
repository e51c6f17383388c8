"""The policy link: pure retention/correlation by hand, and real kvpress presses on the model."""

import math

import numpy as np
import pytest
import torch

from kv_transition.engines.hf import HFEngine
from kv_transition.probes.capture import KVCapture
from kv_transition.probes.compression import (high_novelty, kept_mask, rank_correlation,
                                              retention, run_press)
from kv_transition.probes.store import MemorySink
from kv_transition.settings import ModelConfig, PressConfig

TEXT = " ".join(["the old river ran past the quiet town . the teacher carried a book ."] * 6)


def test_retention_by_hand():
    novelty = np.arange(10.0)  # the 0.8 quantile is 7.2: positions 8 and 9 are high-novelty
    kept = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 1])
    assert high_novelty(novelty, 0.8).nonzero()[0].tolist() == [8, 9]
    r = retention(novelty, kept, 0.8)
    assert (r.n_positions, r.n_high) == (10, 2)
    assert r.kept_frac_all == pytest.approx(0.6) and r.kept_frac_high == pytest.approx(0.5)


def test_retention_ignores_positions_without_novelty():
    novelty = np.array([np.nan, np.nan, 1.0, 2.0, 3.0, 4.0])
    r = retention(novelty, np.array([1, 1, 0, 0, 0, 1]), 0.5)
    assert r.n_positions == 4 and r.kept_frac_all == pytest.approx(0.25)
    assert r.n_high == 2 and r.kept_frac_high == pytest.approx(0.5)


def test_rank_correlation():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert rank_correlation(x, x ** 3)[0] == pytest.approx(1.0)
    assert rank_correlation(x, -x)[0] == pytest.approx(-1.0)
    assert math.isnan(rank_correlation(x, np.ones(5))[0])


def test_kept_mask_locates_kept_rows():
    full = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
    kept = torch.stack([full[0, [4, 1]], full[1, [0, 5]]])
    mask = kept_mask(full, kept)
    assert mask[0].nonzero()[0].tolist() == [1, 4] and mask[1].nonzero()[0].tolist() == [0, 5]
    with pytest.raises(RuntimeError, match="matches no uncompressed key"):
        kept_mask(full, kept + 1.0)


@pytest.fixture(scope="module")
def engine(models_root):
    return HFEngine(ModelConfig(device="cpu", dtype="float32"), PressConfig(), models_root)


@pytest.fixture(scope="module")
def ids(engine):
    return engine.tokenizer(TEXT).input_ids


def test_streamingllm_keeps_sinks_and_the_recent_window(engine, ids):
    out = run_press(engine, ids, "streamingllm", 0.5, [0, 1])
    n = len(ids)
    n_keep = int(n * 0.5)
    for layer in (0, 1):
        kept = out.kept[layer]
        assert kept.shape == (2, n) and (kept.sum(axis=1) == n_keep).all()
        expected = set(range(4)) | set(range(n - (n_keep - 4), n))
        assert set(kept[0].nonzero()[0].tolist()) == expected
    assert out.applied["compression_ratio"] == pytest.approx(0.5)


def test_knorm_score_is_minus_the_norm_of_the_captured_keys(engine, ids):
    """The press scores the same keys the capture records: rho(−‖k‖, score) = 1."""
    sink = MemorySink()
    capture = KVCapture([0, 1], [0, 1], "keys", sink, len(ids))
    with torch.no_grad(), capture.attach(engine.model):
        engine.model(torch.tensor([ids]))
    out = run_press(engine, ids, "knorm", 0.5, [0, 1])
    for layer in (0, 1):
        _, keys = sink.get(layer, "keys")  # [positions, heads, dim]
        neg_norm = -np.linalg.norm(keys, axis=-1).T  # [heads, positions]
        np.testing.assert_allclose(out.scores[layer], neg_norm, rtol=1e-4, atol=1e-5)
        # repeated tokens have equal norms up to rounding, so near-ties may swap ranks
        assert rank_correlation(neg_norm[0], out.scores[layer][0])[0] > 0.99
        # what it kept are the smallest-norm keys (ties between repeated tokens aside)
        kept = out.kept[layer][0]
        assert neg_norm[0][kept].min() >= neg_norm[0][~kept].max() - 1e-5


def test_h2o_runs_with_eager_attention_and_restores_it(engine, ids):
    before = engine.model.config._attn_implementation
    out = run_press(engine, ids, "h2o", 0.5, [1])
    assert out.kept[1].sum(axis=1).tolist() == [len(ids) // 2] * 2
    assert engine.model.config._attn_implementation == before


def test_link_rows_for_heads_and_for_hidden_states():
    from kv_transition.probes.compression import PressOutcome
    from kv_transition.probes.series import layer_series, link_rows
    from kv_transition.settings import ProbesConfig

    cfg = ProbesConfig(window=4, mahalanobis_window=4, high_novelty_quantile=0.5)
    arr = np.random.default_rng(1).normal(size=(12, 2, 3))
    kept = np.zeros((2, 12), bool)
    kept[0, ::2] = True  # head 0 keeps even positions, head 1 keeps all
    kept[1] = True
    scores = np.tile(np.arange(12.0), (2, 1))
    outcome = PressOutcome("knorm", 0.5, {}, {0: kept}, {0: scores})
    seg = slice(6, 12)
    series = layer_series(0, arr, [0, 1], cfg)
    rows = {(r[1], r[2]): r for r in link_rows(outcome, series, [0], [0, 1], seg, cfg)}
    assert len(rows) == 3 * 4  # heads 0, 1 and all, four metrics
    assert rows[(0, "l2")][5].kept_frac_all == pytest.approx(0.5)
    assert rows[(-1, "l2")][5].kept_frac_all == pytest.approx(0.75)  # mean over the two heads
    # hidden states: one vector per position, compared with the mean over all KV heads
    hidden = layer_series(0, arr.reshape(12, 1, 6), None, cfg)
    assert {k[1] for k in hidden} == {-1}
    rows = link_rows(outcome, hidden, [0], None, seg, cfg)
    assert len(rows) == 4 and rows[0][5].kept_frac_all == pytest.approx(0.75)
