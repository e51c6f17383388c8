"""The model session: one prefill, feed and step that every tool shares."""

import pytest
import torch

from kv_transition.engines.session import ModelSession, uneven_layers
from kv_transition.settings import ModelConfig, PressConfig

TEXT = " ".join(["the old river ran past the quiet town ."] * 20)


@pytest.fixture(scope="module")
def session(models_root):
    return ModelSession(ModelConfig(device="cpu", dtype="float32"), PressConfig(), models_root)


def _ids(session, text=TEXT):
    return torch.tensor([session.tokenizer(text).input_ids])


def test_prefill_then_feed_at_full_cache_is_one_forward(session):
    ids = _ids(session)
    whole = session.model(input_ids=ids).logits[0]
    state = session.prefill(ids[:, :40], "full", 1.0, all_logits=True)
    assert torch.allclose(state.prompt_logits, whole[:40], atol=1e-4)
    rows = session.feed(state, ids[:, 40:], all_logits=True)
    assert torch.allclose(rows, whole[40:], atol=1e-4)
    assert state.n_positions == ids.shape[1]


def test_step_continues_where_feed_stopped(session):
    ids = _ids(session)
    state = session.prefill(ids[:, :-1], "snapkv", 0.5)
    stepped = session.step(state, int(ids[0, -1]))
    again = session.prefill(ids[:, :-1], "snapkv", 0.5)
    fed = session.feed(again, ids[:, -1:])
    assert torch.allclose(stepped, fed[-1], atol=1e-4)
    assert torch.equal(state.next_logits, stepped)


def test_feed_on_uneven_layers_matches_token_by_token(session):
    # PyramidKV leaves the layers of different lengths: no one mask fits, so feed goes token
    # by token, and with every row asked for it must give each fed position's logits
    ids = _ids(session, " ".join([TEXT] * 2))  # 300 tokens: budget 0.5 splits 236 / 64
    state = session.prefill(ids[:, :300], "pyramidkv", 0.5)
    assert uneven_layers(state.cache)
    tail = ids[:, 300:306]
    rows = session.feed(state, tail, all_logits=True)
    ref = session.prefill(ids[:, :300], "pyramidkv", 0.5)
    steps = torch.stack([session.step(ref, int(t)) for t in tail[0]])
    assert rows.shape == (6, steps.shape[-1]) and torch.allclose(rows, steps, atol=1e-5)


def test_on_press_sees_the_press_before_it_compresses(session):
    seen = []
    session.prefill(_ids(session), "knorm", 0.5, on_press=seen.append)
    assert type(seen[0]).__name__ == "KnormPress"
    session.prefill(_ids(session), "full", 1.0, on_press=seen.append)
    assert seen[1] is None
