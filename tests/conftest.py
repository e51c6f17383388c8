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
