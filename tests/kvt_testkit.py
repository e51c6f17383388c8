"""Constants and helpers shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# A grid small enough for seconds on CPU, large enough to have several bins and policies.
TINY_CONFIG = {
    "dataset": {"name": "synthetic", "task": "mix", "lengths": [96, 192], "n_per_bin": 3,
                "seed": 0},
    "binning": {"n_bins": 2},
    "model": {"name": "builtin:tiny-random", "dtype": "float32", "device": "cpu"},
    "engine": {"kind": "hf"},
    "kv": {"policies": ["snapkv", "streamingllm"], "budgets": [1.0, 0.5]},
    "decoding": {"max_tokens": 3},
    "analysis": {"n_bootstrap": 200},
    "output": {"exp_group_id": "tiny"},
}


def write_config(path: Path, **sections) -> Path:
    """TINY_CONFIG with some sections replaced."""
    cfg = {**TINY_CONFIG, **sections}
    path.write_text(yaml.safe_dump(cfg))
    return path
