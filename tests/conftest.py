"""Shared fixtures: an isolated home with the builtin tiny model built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kv_transition.engines.builtin import resolve_builtin
import helpers_db
from kvt_testkit import TINY_CONFIG

@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    resolve_builtin("builtin:tiny-random", root)
    return root


@pytest.fixture
def home(tmp_path, models_root, monkeypatch) -> Path:
    """A fresh --home whose data/models points at the session's prebuilt tiny model."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").symlink_to(models_root, target_is_directory=True)
    monkeypatch.setenv("KV_TRANSITION_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_CONFIG))
    return path


@pytest.fixture(scope="session")
def dbh():
    """tests/helpers_db.py: Outcome, build_experiment, paired_scenario, MIB."""
    return helpers_db


@pytest.fixture
def paired_db(tmp_path):
    """(conn, run_ids) for the hand-computed baseline + snapkv@0.5 scenario."""
    conn, run_ids = helpers_db.build_experiment(tmp_path / "x.sqlite")
    yield conn, run_ids
    conn.close()


@pytest.fixture(scope="session")
def tiny_gemma3(models_root, tmp_path_factory):
    """A random-weight Gemma 3 text model: three sliding-window layers, one global, built here
    (no download) with the builtin tiny model's tokenizer. kvpress hooks every layer of
    Gemma3ForCausalLM, the integration fault reported in issue 16."""
    import json
    import shutil

    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    source = next(models_root.glob("builtin-tiny-random*"))
    out = tmp_path_factory.mktemp("tiny-gemma3")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, out / name)
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
                              head_dim=32, sliding_window=32, max_position_embeddings=2048,
                              layer_types=["sliding_attention"] * 3 + ["full_attention"])
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(out)
    return out
