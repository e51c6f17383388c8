"""Perplexity under compression on the builtin tiny model: exact at full cache, real under a
press, and the held-out file checked before anything is written."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kv_transition.canary import perplexity as ppl
from kv_transition.canary.source import heldout_documents
from kv_transition.engines.factory import make_engine
from kv_transition.errors import BadInput, DataError
from kv_transition.settings import PerplexityConfig, Settings

TINY = {"model": {"name": "builtin:tiny-random", "dtype": "float32", "device": "cpu"}}
CFG = PerplexityConfig(n_texts=2, prefix_tokens=48, continuation_tokens=12)


@pytest.fixture(scope="module")
def engine(models_root):
    eng = make_engine(Settings.model_validate(TINY), models_root, [("full", 1.0)])
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def windows(engine):
    return ppl.make_windows(heldout_documents(CFG, engine.count_tokens), engine.tokenizer, CFG)


def test_windows_are_cut_to_size_with_a_bos(engine, windows):
    assert len(windows) == 2 and len({w.text_id for w in windows}) == 2
    for w in windows:
        assert w.prefix[0] == engine.tokenizer.bos_token_id
        assert len(w.prefix) == 1 + CFG.prefix_tokens and len(w.continuation) == 12
    again = ppl.make_windows(heldout_documents(CFG, engine.count_tokens), engine.tokenizer, CFG)
    assert [w.text_hash for w in again] == [w.text_hash for w in windows]


def test_full_cache_loss_equals_one_plain_forward(engine, windows):
    w = windows[0]
    got = ppl.continuation_nll(engine, w, "full", 1.0)
    ids = torch.tensor([w.prefix + w.continuation])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[len(w.prefix) - 1:-1], dim=-1)
    want = -logp.gather(1, torch.tensor(w.continuation).unsqueeze(1)).sum().item()
    assert got["nll_sum"] == pytest.approx(want, rel=1e-4)
    assert got["n_tokens"] == 12 and got["kv_bytes"] == got["kv_bytes_full"] > 0


@pytest.mark.parametrize("policy", ["snapkv", "streamingllm", "pyramidkv"])
def test_compression_shrinks_the_cache_under_the_loss(engine, windows, policy):
    full = ppl.continuation_nll(engine, windows[0], "full", 1.0)
    comp = ppl.continuation_nll(engine, windows[0], policy, 0.5)
    assert comp["kv_bytes"] < 0.6 * full["kv_bytes"]
    assert math.isfinite(comp["nll_sum"]) and comp["nll_sum"] > 0
    if policy != "pyramidkv":  # per-layer budgets may keep a different total
        assert comp["nll_sum"] != full["nll_sum"]  # the continuation saw a different cache


def test_too_little_text_is_bad_input(engine):
    cfg = PerplexityConfig(n_texts=3, prefix_tokens=40, continuation_tokens=10)
    with pytest.raises(BadInput, match="only 1 window"):
        ppl.make_windows([("d", "the river " * 30)], engine.tokenizer, cfg)


def test_check_source_reads_files_and_names_bad_lines(tmp_path, models_root, engine):
    text = "the river was calm. " * 30
    good = tmp_path / "held.jsonl"
    good.write_text("\n".join(json.dumps({"text": text}) for _ in range(2)))
    settings = lambda path, n: Settings.model_validate({  # noqa: E731
        **TINY, "canary": {"perplexity": {"path": str(path), "n_texts": n, "prefix_tokens": 48,
                                          "continuation_tokens": 12}}})
    fits = 2 * (engine.count_tokens(text) // 60)  # two documents of whole windows
    ppl.check_source(settings(good, fits), models_root)
    with pytest.raises(BadInput, match=f"only {fits} window"):
        ppl.check_source(settings(good, fits + 1), models_root)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(DataError, match="line 2"):
        ppl.check_source(settings(bad, 1), models_root)
    with pytest.raises(DataError, match="no such file"):
        ppl.check_source(settings(tmp_path / "missing.txt", 1), models_root)


def test_perplexity_needs_the_hf_engine():
    with pytest.raises(Exception, match="canary.perplexity needs engine.kind 'hf'"):
        Settings.model_validate({"engine": {"kind": "openai", "base_url": "http://x/v1"},
                                 "canary": {"perplexity": {}}})
