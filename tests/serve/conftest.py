"""Fixtures: the builtin tiny model loaded once per module, served on loopback ports."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kv_transition.serve.options import resolve_options
from kv_transition.serve.server import ServerThread, build_state, load_engine
from kv_transition.settings import Settings

SERVE_CONFIG = {"model": {"name": "builtin:tiny-random", "dtype": "float32", "device": "cpu"},
                "decoding": {"max_tokens": 6}}
MODEL = "builtin:tiny-random"


@pytest.fixture(scope="session")
def serve_home(tmp_path_factory, models_root) -> Path:
    home = tmp_path_factory.mktemp("serve_home")
    (home / "data").mkdir()
    (home / "data" / "models").symlink_to(models_root, target_is_directory=True)
    return home


@pytest.fixture(scope="module")
def served_engine(serve_home):
    """(settings, engine): one model for the module; servers over it are started per test."""
    settings = Settings.model_validate(SERVE_CONFIG)
    engine = load_engine(settings, serve_home)
    yield settings, engine
    engine.close()


@pytest.fixture
def start_server(served_engine):
    """start_server(**ServeOptions fields) -> a running ServerThread; stopped after the test."""
    settings, engine = served_engine
    running: list[ServerThread] = []

    def start(**overrides) -> ServerThread:
        options = dataclasses.replace(resolve_options(settings.serve), **overrides)
        server = ServerThread(build_state(engine, settings, options)).start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()
