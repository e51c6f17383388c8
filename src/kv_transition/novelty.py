"""``kv-transition novelty``: capture, measure, link to compression, plot, report.

Everything that can be bad input (engine kind, model, layers, heads, prompt lengths) is checked
before the first row is written. Each prompt is one unit: its tensors stream to disk (or the
``novelty_kv`` table) while generating, and its tokens, series, statistics and policy link are
committed in one transaction. A prompt already complete with the same settings is skipped, so
a rerun adds no rows and only redraws the figures and the report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kv_transition import paths
from kv_transition.db.connect import transaction
from kv_transition.engines.session import ModelSession
from kv_transition.errors import BadInput
from kv_transition.pipeline import Experiment, record_experiment
from kv_transition.policy.spec import Setting
from kv_transition.probes import db
from kv_transition.probes.capture import KVCapture, captured_targets, resolve_heads, resolve_layers
from kv_transition.probes.compression import n_kv_heads, run_press
from kv_transition.probes.generate import encode_prompt, generate_with_capture
from kv_transition.probes.plots import NOVELTY_PLOTS, write_novelty_plots
from kv_transition.probes.prompts import ProbePrompt, prompt_seed, suite
from kv_transition.probes.report import write_novelty_report
from kv_transition.probes.series import (layer_series, link_rows, predictive_series,
                                         segment_slice, series_stats)
from kv_transition.probes.store import DBSink, NpzSink, load_db, load_npz
from kv_transition.probes.transitions import token_pieces, transition_mask
from kv_transition.run.grid import plan_grid


@dataclass
class NoveltyOutcome:
    novelty_dir: Path
    report: Path
    captured: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


@dataclass
class _Probe:
    """What every prompt of one invocation shares."""

    exp: Experiment
    conn: object
    engine: object
    layers: list[int]
    heads: list[int] | None  # None: hidden states (no heads)
    grid: list[Setting]

    @property
    def cfg(self):
        return self.exp.settings.probes

    @property
    def novelty_dir(self) -> Path:
        return self.exp.run_dir / "novelty"


def _policy_grid(settings) -> list[Setting]:
    """The run's grid (one builder: run/grid.py) without its baseline; budgets in tokens
    are left out, since the probe compares kept fractions across contexts."""
    return [s for s in plan_grid(settings) if s.budget < 1.0]


def _load_engine(exp: Experiment) -> ModelSession:
    if exp.settings.engine.kind != "hf":
        raise BadInput(f"engine.kind {exp.settings.engine.kind!r}: the novelty probe reads the "
                       "model's cache in-process and needs engine.kind 'hf'")
    return ModelSession(exp.settings.model, exp.settings.kv.press, paths.models_dir(exp.root))


def _encode_all(engine, prompts: list[ProbePrompt], cap: int) -> dict[str, list[int]]:
    encoded = {p.prompt_id: encode_prompt(engine, p.text) for p in prompts}
    for pid, ids in encoded.items():
        if len(ids) >= cap:
            raise BadInput(f"probes.max_positions {cap}: prompt {pid!r} alone has {len(ids)} "
                           f"tokens; allowed: a cap above the longest prompt "
                           f"(at least {len(ids) + 1})")
        if engine.max_positions and len(ids) >= engine.max_positions:
            raise BadInput(f"probes.prompts: {pid!r} has {len(ids)} tokens, more than the "
                           f"model's {engine.max_positions} positions")
    return encoded


def _capture_hash(exp, prompt: ProbePrompt, ids: list[int]) -> str:
    """Everything that changes what a prompt's rows would hold."""
    s = exp.settings
    # the prompt list is left out: adding a prompt must not redo the others
    probes = s.probes.model_dump(mode="json", exclude={"prompts"})
    payload = {"model": s.model.model_dump(mode="json"), "probes": probes,
               "grid": _policy_grid(s), "press": s.kv.press.model_dump(mode="json"),
               "prompt": prompt.text, "ids": ids}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _max_new(probe: _Probe, n_prompt: int) -> int:
    limit = probe.cfg.max_positions - n_prompt
    model_limit = probe.engine.max_positions
    if model_limit:
        limit = min(limit, model_limit - n_prompt)
    return max(1, min(probe.cfg.max_new_tokens, limit))


def _capture(probe: _Probe, run_id: int, store_dir: Path, ids: list[int], seed: int):
    cfg = probe.cfg
    sink = NpzSink(store_dir) if cfg.store == "npz" else DBSink(probe.conn, run_id)
    heads = probe.heads if probe.heads is not None else [0]
    capture = KVCapture(probe.layers, heads, cfg.target, sink, cfg.max_positions)
    try:
        gen = generate_with_capture(probe.engine, ids, capture, _max_new(probe, len(ids)),
                                    cfg.temperature, seed)
    finally:
        sink.close()
    return gen


def _load_layer(probe: _Probe, run_id: int, store_dir: Path, layer: int, n: int) -> np.ndarray:
    target = probe.cfg.target
    if probe.cfg.store == "npz":
        positions, arr = load_npz(store_dir, layer, target)
    else:
        width = len(probe.heads) if probe.heads is not None else 1
        dim = _vector_dim(probe.engine.model, target)
        positions, arr = load_db(probe.conn, run_id, layer, target, (width, dim))
    if not np.array_equal(positions, np.arange(n)):
        raise RuntimeError(f"layer {layer}: captured positions are not 0..{n - 1}")
    return arr


def _vector_dim(model, target: str) -> int:
    cfg = model.config
    if target == "hidden":
        return cfg.hidden_size
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _analyse(probe: _Probe, run_id: int, store_dir: Path, gen) -> dict:
    n = len(gen.token_ids)
    series = predictive_series(gen.logprob, gen.entropy)
    for layer in probe.layers:
        arr = _load_layer(probe, run_id, store_dir, layer, n)
        series.update(layer_series(layer, arr, probe.heads, probe.cfg))
    pieces = token_pieces(probe.engine.tokenizer, gen.token_ids)
    transitions = transition_mask(pieces)
    seg = segment_slice(probe.cfg.segment, gen.n_prompt, n)
    links = []
    for policy, budget in probe.grid:
        outcome = run_press(probe.engine, gen.token_ids, policy, budget, probe.layers)
        links += link_rows(outcome, series, probe.layers, probe.heads, seg, probe.cfg)
    return {"series": series, "pieces": pieces, "transitions": transitions, "seg": seg,
            "stats": series_stats(series, transitions, seg, probe.cfg), "links": links}


def _probe_prompt(probe: _Probe, prompt: ProbePrompt, ids: list[int]) -> bool:
    """Capture and analyse one prompt; False when it is already complete."""
    exp, conn = probe.exp, probe.conn
    digest = _capture_hash(exp, prompt, ids)
    old = db.find_run(conn, exp.exp_id, prompt.prompt_id)
    if old and old["status"] == "complete" and old["capture_hash"] == digest:
        return False
    if old:
        db.delete_run(conn, old["novelty_run_id"])
    store_dir = probe.novelty_dir / "kv" / prompt.prompt_id
    shutil.rmtree(store_dir, ignore_errors=True)
    cfg = probe.cfg
    seed = prompt_seed(prompt.prompt_id, cfg.seed)
    run_id = db.start_run(
        conn, exp_group_id=exp.exp_id, prompt_id=prompt.prompt_id, prompt_kind=prompt.kind,
        model_name=exp.settings.model.name, target=cfg.target, temperature=cfg.temperature,
        seed=seed, capture_hash=digest, n_prompt_tokens=len(ids), store=cfg.store,
        store_path=(str(store_dir.relative_to(exp.run_dir)) if cfg.store == "npz" else None))
    gen = _capture(probe, run_id, store_dir, ids, seed)
    result = _analyse(probe, run_id, store_dir, gen)
    text = probe.engine.tokenizer.decode(gen.token_ids[gen.n_prompt:], skip_special_tokens=True)
    meta = {"layers": probe.layers, "heads": probe.heads, "segment": cfg.segment,
            "segment_range": [result["seg"].start, result["seg"].stop],
            "captured": list(captured_targets(cfg.target)), "n_positions": len(gen.token_ids),
            "grid": probe.grid, "primary_metric": cfg.primary_metric}
    with transaction(conn):
        db.insert_tokens(conn, run_id, gen.token_ids, result["pieces"], gen.n_prompt,
                         gen.logprob, gen.entropy, result["transitions"])
        db.insert_series(conn, run_id, result["series"])
        db.insert_stats(conn, run_id, result["seg"].start, result["stats"])
        db.insert_compression(conn, run_id, result["links"])
        db.finish_run(conn, run_id, gen.n_generated, gen.finish_reason, text, meta)
    return True


def run_novelty(exp: Experiment) -> NoveltyOutcome:
    """The whole probe for ``exp``; returns where the figures and the report went."""
    cfg = exp.settings.probes
    engine = _load_engine(exp)
    mcfg = engine.model.config
    layers = resolve_layers(cfg.layers, mcfg.num_hidden_layers)
    heads = None if cfg.target == "hidden" else resolve_heads(cfg.heads, n_kv_heads(mcfg))
    prompts = suite(cfg.prompts)
    encoded = _encode_all(engine, prompts, cfg.max_positions)
    conn = exp.connect()
    record_experiment(conn, exp)
    probe = _Probe(exp, conn, engine, layers, heads, _policy_grid(exp.settings))
    outcome = NoveltyOutcome(probe.novelty_dir, probe.novelty_dir / "novelty_report.md")
    for prompt in prompts:
        done = _probe_prompt(probe, prompt, encoded[prompt.prompt_id])
        (outcome.captured if done else outcome.skipped).append(prompt.prompt_id)
    figures = [probe.novelty_dir / name for name in NOVELTY_PLOTS]
    if outcome.captured or not all(f.is_file() for f in figures):
        # figures derive from the rows: unchanged rows, unchanged figures
        outcome.figures = write_novelty_plots(conn, exp.exp_id, probe.novelty_dir, cfg)
    write_novelty_report(conn, exp.exp_id, exp.run_dir, cfg)
    return outcome
