"""A smoke-sized reference model, trained once per test session on CPU (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kv_transition.reference.train import train
from reference_testkit import smoke_config


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke-reference")
    summary = train(smoke_config(out), log=lambda _: None)
    assert summary["done"]
    return out
