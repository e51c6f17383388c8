"""Every press the catalog supports runs inside the builtin model, with the budget applied."""

from pathlib import Path

import pytest

from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.policy.spec import policy_spec
from kv_transition.press_catalog import DECODING, LIST_INNER, PRESSES, runs_offline
from kv_transition.settings import KVConfig, ModelConfig

CONTEXT = " ".join(["the old river ran past the quiet town ."] * 30)


def _definition(name: str) -> dict:
    info = PRESSES[name]
    entry = {"name": f"p_{name.lower()}", "press": name}
    if info.inner:
        entry["inner"] = [{"press": "SnapKVPress"}, {"press": "KnormPress"}] \
            if LIST_INNER & set(info.inner) else {"press": "SnapKVPress"}
    return entry


# decoding presses leave the prefill whole: tests/kv/test_decoding_presses.py runs them
RUNNABLE = sorted(n for n, i in PRESSES.items() if runs_offline(i) and i.role != DECODING)


@pytest.fixture(scope="module")
def engine(models_root: Path):
    kv = KVConfig(policies=[_definition(n) for n in RUNNABLE])
    return HFEngine(ModelConfig(device="cpu", dtype="float32"), kv.press, models_root)


def _req(**kw):
    return GenerationRequest(**{"context": CONTEXT, "question": "what ran past the town ?",
                                "max_tokens": 4, **kw})


@pytest.mark.parametrize("name", RUNNABLE)
def test_press_runs_with_the_budget_applied(engine, name):
    full = engine.generate(_req())
    half = engine.generate(_req(policy=f"p_{name.lower()}", budget=0.5))
    applied = half.raw["applied"]
    holder, field = applied["budget_field"].split(".")
    assert applied[field] == pytest.approx(0.5) and applied["press_tree"]["press"] == name
    ratio = half.kv_bytes / full.kv_bytes
    if PRESSES[name].frees_bytes and PRESSES[holder].frees_bytes:
        assert ratio < 0.6  # about half the context dropped; the question is kept whole
    else:  # masks or zeroes: the bytes stay, which the report must say (honest memory)
        assert ratio == pytest.approx(1.0, abs=0.01)
    seen, full_seen = half.notes["kv_attended_fraction"], full.notes["kv_attended_fraction"]
    assert full_seen == pytest.approx(1.0)
    if name in ("AdaKVPress", "CriticalAdaKVPress"):  # masked: attention sees about half
        assert seen < 0.6 and sum(half.notes["kv_layer_masked"]) > 0
    elif name == "ThinKPress":  # every token stays visible; key channels are zeroed
        assert seen == pytest.approx(1.0)


def test_a_defined_snapkv_answers_like_the_built_in_one(engine, models_root):
    kv = KVConfig(policies=["snapkv", {"name": "my_snap", "press": "SnapKVPress"}])
    assert policy_spec("my_snap").shared_prefill
    ours = engine.generate(_req(policy="my_snap", budget=0.5))
    built_in = engine.generate(_req(policy="snapkv", budget=0.5))
    assert ours.raw["token_ids"] == built_in.raw["token_ids"]
    assert ours.kv_bytes == built_in.kv_bytes
    assert kv.press.custom["my_snap"].press == "SnapKVPress"


def test_wrappers_take_a_fresh_prefill():
    KVConfig(policies=[{"name": "ada", "press": "AdaKVPress", "inner": {"press": "KnormPress"}}])
    assert not policy_spec("ada").shared_prefill


def test_a_download_press_fails_offline_with_a_clear_error(engine, monkeypatch):
    import huggingface_hub.constants

    from kv_transition.errors import BadInput

    # the hub reads HF_HUB_OFFLINE once, at import: set both, so no request is even tried
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    KVConfig(policies=[{"name": "qf", "press": "QFilterPress"}])
    with pytest.raises(BadInput, match="QFilterPress needs Q-filters .* Hugging Face Hub"):
        engine.generate(_req(policy="qf", budget=0.5))
