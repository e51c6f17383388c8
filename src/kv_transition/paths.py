"""Canonical locations of everything an experiment writes, rooted at ``--home``."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "KV_TRANSITION_HOME"


def home(explicit: str | Path | None = None) -> Path:
    """``--home``, else ``$KV_TRANSITION_HOME``, else the current directory."""
    root = explicit or os.environ.get(HOME_ENV) or Path.cwd()
    return Path(root).expanduser().resolve()


def run_dir(root: Path, exp_group_id: str) -> Path:
    return root / "runs" / exp_group_id


def db_path(root: Path, exp_group_id: str, configured: str | None = None) -> Path:
    if configured:
        p = Path(configured).expanduser()
        return p if p.is_absolute() else root / p
    return run_dir(root, exp_group_id) / "kv_transition.sqlite"


def processed_dir(root: Path, dataset_id: str) -> Path:
    return root / "data" / "processed" / dataset_id


def manifest_path(root: Path, dataset_id: str) -> Path:
    return processed_dir(root, dataset_id) / "manifest.json"


def plots_dir(root: Path, exp_group_id: str) -> Path:
    return run_dir(root, exp_group_id) / "plots"


def models_dir(root: Path) -> Path:
    return root / "data" / "models"
