"""Capture hooks on the builtin tiny model record exactly what the cache holds."""

import sqlite3

import numpy as np
import pytest
import torch

from kv_transition.db.connect import connect
from kv_transition.engines.hf import HFEngine
from kv_transition.errors import BadInput
from kv_transition.probes.capture import (KVCapture, cache_rows, decoder_layers, resolve_heads,
                                          resolve_layers)
from kv_transition.probes.generate import encode_prompt, generate_with_capture
from kv_transition.probes.store import DBSink, MemorySink, NpzSink, load_db, load_npz
from kv_transition.settings import ModelConfig, PressConfig

PROMPT = "the old river ran past the quiet town . the teacher carried a book to the market"


@pytest.fixture(scope="module")
def engine(models_root):
    return HFEngine(ModelConfig(device="cpu", dtype="float32"), PressConfig(), models_root)


def _generate(engine, sink, target="keys", heads=(0, 1), layers=(0, 1), max_positions=10_000,
              n_new=12):
    ids = encode_prompt(engine, PROMPT)
    capture = KVCapture(list(layers), list(heads), target, sink, max_positions)
    return generate_with_capture(engine, ids, capture, n_new), capture


def test_captured_keys_and_values_equal_the_cache_after_generation(engine, tmp_path):
    sink = NpzSink(tmp_path / "kv", chunk=5)  # several chunks per layer
    gen, _ = _generate(engine, sink, heads=[1])
    sink.close()
    n = len(gen.token_ids)
    assert gen.n_generated == 12
    for layer in (0, 1):
        for target in ("keys", "values"):
            positions, rows = load_npz(tmp_path / "kv", layer, target)
            assert positions.tolist() == list(range(n))
            expected = cache_rows(gen.cache, layer, [1], target).numpy()
            assert rows.shape == expected.shape == (n, 1, 16)
            np.testing.assert_array_equal(rows, expected)


def test_values_are_the_value_projection_of_the_captured_hidden_states(engine):
    kv, hidden = MemorySink(), MemorySink()
    _generate(engine, kv)
    _generate(engine, hidden, target="hidden")  # greedy: the same tokens again
    attn = decoder_layers(engine.model)[1].self_attn
    _, h = hidden.get(1, "hidden")
    _, v = kv.get(1, "values")
    with torch.no_grad():
        projected = attn.v_proj(torch.from_numpy(h[:, 0, :])).view(len(h), -1, attn.head_dim)
    np.testing.assert_allclose(v, projected.numpy(), atol=1e-5)


def test_logprobs_match_a_full_forward_over_the_sequence(engine):
    gen, _ = _generate(engine, MemorySink())
    ids = torch.tensor([gen.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(ids).logits[0].double(), dim=-1)
    expected = [logp[t - 1, gen.token_ids[t]].item() for t in range(1, len(gen.token_ids))]
    assert np.isnan(gen.logprob[0])
    np.testing.assert_allclose(gen.logprob[1:], expected, atol=1e-4)
    # greedy: every generated token is the most likely one
    assert all(gen.logprob[t] >= logp[t - 1].max().item() - 1e-4
               for t in range(gen.n_prompt, len(gen.token_ids)))


def test_positions_beyond_the_cap_are_not_recorded(engine):
    sink = MemorySink()
    n_prompt = len(encode_prompt(engine, PROMPT))
    gen, capture = _generate(engine, sink, max_positions=n_prompt + 5)
    positions, _ = sink.get(0, "keys")
    assert positions.tolist() == list(range(n_prompt + 5))
    assert capture.n_recorded == n_prompt + 5 < len(gen.token_ids)


def test_npz_sink_memory_stays_within_one_chunk(tmp_path):
    sink = NpzSink(tmp_path, chunk=8)
    for pos in range(20):
        sink.append(0, "keys", np.array([pos]), np.full((1, 2, 3), pos, np.float32))
        assert sink.buffered() < 8
    sink.close()
    positions, rows = load_npz(tmp_path, 0, "keys")
    assert positions.tolist() == list(range(20)) and rows[:, 0, 0].tolist() == list(range(20))
    with np.load(tmp_path / "layer_00.npz") as data:  # a plain .npz, one member per chunk
        assert sorted(k for k in data.files if k.startswith("keys_")) == [
            "keys_00000", "keys_00001", "keys_00002"]


def test_db_sink_round_trip(tmp_path):
    conn = connect(tmp_path / "x.sqlite")
    conn.execute("INSERT INTO experiments VALUES ('e', 'now', 'cfg', NULL, NULL)")
    run_id = conn.execute(
        "INSERT INTO novelty_runs(exp_group_id, prompt_id, prompt_kind, model_name, target, "
        "temperature, seed, capture_hash, status, n_prompt_tokens, store, created_at) "
        "VALUES ('e','p','prose','m','keys',0,0,'h','capturing',3,'db','now')").lastrowid
    sink = DBSink(conn, run_id, chunk=4)
    data = np.random.default_rng(0).normal(size=(10, 2, 3)).astype(np.float32)
    for pos in range(10):
        sink.append(1, "keys", np.array([pos]), data[pos:pos + 1])
    sink.close()
    positions, rows = load_db(conn, run_id, 1, "keys", (2, 3))
    assert positions.tolist() == list(range(10))
    np.testing.assert_array_equal(rows, data)
    conn.execute("DELETE FROM novelty_runs WHERE novelty_run_id=?", (run_id,))
    assert conn.execute("SELECT COUNT(*) FROM novelty_kv").fetchone()[0] == 0  # cascades


def test_layer_and_head_selection():
    assert resolve_layers([0, -1], 2) == [0, 1]
    assert resolve_layers("all", 3) == [0, 1, 2]
    assert resolve_heads([1], 2) == [1]
    with pytest.raises(BadInput, match="probes.layers: 5 is out of range.*2 layers"):
        resolve_layers([5], 2)
    with pytest.raises(BadInput, match="probes.heads: 2 is out of range.*2 KV heads"):
        resolve_heads([2], 2)


def test_migration_creates_the_novelty_tables(tmp_path):
    conn = connect(tmp_path / "x.sqlite")
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"novelty_runs", "novelty_tokens", "novelty_kv", "novelty_series", "novelty_stats",
            "novelty_compression"} <= names
    assert 3 in {r[0] for r in conn.execute("SELECT version FROM migrations")}
    assert isinstance(conn, sqlite3.Connection)
