"""Fixtures over tests/helpers_db.py, the shared hand-built experiment database."""

import importlib.util
import sys
from pathlib import Path

import pytest


def _helpers():
    # loaded by path and cached under one name, so both test folders share one module
    name = "kvt_tests_helpers_db"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "helpers_db.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def dbh():
    """The helpers module: Outcome, build_experiment, paired_scenario, MIB."""
    return _helpers()


@pytest.fixture
def paired_db(tmp_path):
    """(conn, run_ids) for the hand-computed baseline + snapkv@0.5 scenario."""
    conn, run_ids = _helpers().build_experiment(tmp_path / "x.sqlite")
    yield conn, run_ids
    conn.close()
