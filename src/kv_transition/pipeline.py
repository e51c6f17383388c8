"""The six phases. Each opens the experiment database, does its part, and can be rerun alone."""

from __future__ import annotations

import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from kv_transition import paths
from kv_transition.canary.task import FUNCTIONAL
from kv_transition.data.binning import cluster_of, sample_bins, with_questions
from kv_transition.data.longbench import load_longbench
from kv_transition.data.manifest import (build_manifest, dataset_id, manifest_from_db,
                                         save_manifest_json, write_manifest)
from kv_transition.data.normalize import Example
from kv_transition.data.prompt import prompt_tokens
from kv_transition.data.synthetic import generate_examples
from kv_transition.db.connect import connect, transaction
from kv_transition.engines import factory
from kv_transition.engines.tokenizer import load_counter
from kv_transition.errors import BadInput
from kv_transition.eval.score import score_experiment
from kv_transition.run.orchestrate import run_grid
from kv_transition.settings import AnalysisConfig, Settings


@dataclass
class Experiment:
    settings: Settings
    root: Path

    @property
    def exp_id(self) -> str:
        return self.settings.output.exp_group_id

    @property
    def db_path(self) -> Path:
        return paths.db_path(self.root, self.exp_id, self.settings.db.path)

    @property
    def run_dir(self) -> Path:
        return paths.run_dir(self.root, self.exp_id)

    def connect(self, must_exist: bool = False) -> sqlite3.Connection:
        if must_exist and not self.db_path.is_file():
            raise BadInput(f"{self.db_path}: no experiment database yet; run `prepare` first")
        return connect(self.db_path)


def _git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def record_experiment(conn: sqlite3.Connection, exp: Experiment) -> None:
    """Store the validated config (never the environment) and the code version."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO experiments(exp_group_id, created_at, config_yaml, git_hash) "
            "VALUES (?,?,?,?) ON CONFLICT(exp_group_id) DO UPDATE SET "
            "config_yaml=excluded.config_yaml, git_hash=excluded.git_hash",
            (exp.exp_id, datetime.now(timezone.utc).isoformat(),
             exp.settings.snapshot_yaml(), _git_hash()))


def current_dataset(conn: sqlite3.Connection, exp: Experiment) -> str:
    """The experiment's one dataset; a phase after prepare needs it."""
    rows = [r[0] for r in conn.execute("SELECT dataset_id FROM datasets")]
    if not rows:
        raise BadInput(f"{exp.db_path}: no prepared dataset; run `prepare` first")
    return rows[0]


def load_examples(settings: Settings, count_tokens: Callable[[str], int]) -> list[Example]:
    """The candidates of the task source the config names (prepare and refine bin them)."""
    cfg = settings.dataset
    if cfg.name == "synthetic":
        n_each = cfg.candidates_per_length(settings.binning.n_bins)
        return [ex for target in cfg.lengths
                for ex in generate_examples(cfg.task, target, n_each, cfg.seed, count_tokens,
                                             families=cfg.tasks,
                                             questions=cfg.questions_per_context)]
    if cfg.name == FUNCTIONAL.dataset:
        return FUNCTIONAL.source(cfg, settings.binning.n_bins, count_tokens)
    return load_longbench(cfg.task, cfg.path)


def prepare(exp: Experiment) -> str:
    """Build (or find) the length-binned manifest; returns the dataset id."""
    count, tok_id = load_counter(exp.settings, paths.models_dir(exp.root))
    ds_id = dataset_id(exp.settings, tok_id)
    json_path = paths.manifest_path(exp.root, ds_id)
    if exp.db_path.is_file():
        conn = exp.connect()
        existing = [r[0] for r in conn.execute("SELECT dataset_id FROM datasets")]
        if ds_id in existing:
            save_manifest_json(manifest_from_db(conn, ds_id), json_path)  # derived; refresh
            record_experiment(conn, exp)
            return ds_id
        if existing:
            raise BadInput(
                f"{exp.db_path}: experiment {exp.exp_id!r} already holds dataset {existing[0]!r}, "
                "prepared with other dataset/binning/tokenizer settings; use a new "
                "output.exp_group_id (or db.path) for the new dataset")
    examples = load_examples(exp.settings, count)  # DataError before the database is touched
    by_id = _unique(examples)
    lengths = {ex.example_id: prompt_tokens(ex, count) for ex in examples}
    # contexts are binned and sampled, then each brings its further questions along
    firsts = {i: n for i, n in lengths.items() if cluster_of(by_id[i]) == i}
    bins = with_questions(sample_bins(firsts, exp.settings.binning.n_bins,
                                      exp.settings.dataset.n_per_bin, exp.settings.dataset.seed),
                          examples)
    manifest = build_manifest(ds_id, exp.settings, tok_id, bins, lengths)
    conn = exp.connect()
    record_experiment(conn, exp)
    write_manifest(conn, manifest, by_id, json_path)
    return ds_id


def _unique(examples) -> dict:
    by_id = {}
    for ex in examples:
        if ex.example_id in by_id:
            raise BadInput(f"dataset: duplicate example id {ex.example_id!r}; ids must be unique")
        by_id[ex.example_id] = ex
    if not by_id:
        raise BadInput("dataset: the source produced no examples")
    return by_id


def run(exp: Experiment, show_progress: bool = True) -> int:
    conn = exp.connect(must_exist=True)
    ds_id = current_dataset(conn, exp)

    def make(grid):  # through the module, so a test can swap factory.make_engine
        return factory.make_engine(exp.settings, paths.models_dir(exp.root), grid)

    if exp.settings.canary.perplexity is not None:  # the functional canary (issue 5)
        from kv_transition.canary import perplexity  # lazy: imports torch

        perplexity.check_source(exp.settings, paths.models_dir(exp.root))  # before any row
    done = run_grid(conn, exp.settings, ds_id, make, show_progress,
                    on_start=lambda: record_experiment(conn, exp),
                    models_root=paths.models_dir(exp.root))
    if exp.settings.canary.perplexity is not None:
        perplexity.run_perplexity(conn, exp.settings, ds_id, paths.models_dir(exp.root))
    return done


def score(exp: Experiment) -> dict[str, int]:
    conn = exp.connect(must_exist=True)
    if exp.settings.dataset.name == FUNCTIONAL.dataset:  # sandbox runs in parallel, then cached
        FUNCTIONAL.score(conn, exp.exp_id)
    return score_experiment(conn, exp.exp_id)


def analyze_group(conn: sqlite3.Connection, exp_group_id: str, cfg: AnalysisConfig,
                  run_dir: Path, looks: int = 1) -> dict[str, Any]:
    """The analyze phase on an open database: bin statistics, transitions, plots and the table
    (analysis/run_analysis.py), then the functional canary's SDS rows and plots/divergence.png
    (canary/sds.py; none without measured perplexity)."""
    # lazy, both: numpy, scipy and matplotlib stay off CLI start-up
    from kv_transition.analysis.run_analysis import analyze as run_analysis
    from kv_transition.canary.sds import analyze_sds

    summary = run_analysis(conn, exp_group_id, cfg, run_dir, looks)
    return {**summary, **analyze_sds(conn, exp_group_id, cfg, Path(run_dir) / "plots")}


def analyze(exp: Experiment) -> dict:
    from kv_transition.analysis.transition import planned_looks  # lazy: scipy, as above

    conn = exp.connect(must_exist=True)
    looks = planned_looks(exp.settings.dataset.n_per_bin, exp.settings.analysis.max_n_per_bin)
    return analyze_group(conn, exp.exp_id, exp.settings.analysis, exp.run_dir, looks)


def report(exp: Experiment) -> Path:
    from kv_transition.report.build import build_report  # lazy: matplotlib off CLI start-up

    conn = exp.connect(must_exist=True)
    return build_report(conn, exp.exp_id, exp.run_dir)
