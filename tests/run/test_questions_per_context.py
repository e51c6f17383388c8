"""Several questions per context: one compressed prefill per context and setting, each question
answered from a copy of it, exactly as a fresh prefill would answer it; statistics per context."""

import json
import sqlite3
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from kvt_testkit import REPO, write_config
from kv_transition.cli import app
from kv_transition.data.synthetic import generate_examples
from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.engines.shared_prefill import generate_settings
from kv_transition.policy.spec import Setting
from kv_transition.settings import ModelConfig, PressConfig


@pytest.fixture(scope="module")
def engine(models_root):
    return HFEngine(ModelConfig(device="cpu", dtype="float32"), PressConfig(), models_root)


@pytest.fixture(scope="module")
def questions(engine):
    examples = generate_examples("niah_multikey", 200, 1, 0, engine.count_tokens, questions=3)
    return [GenerationRequest(context=ex.context, question=ex.question, max_tokens=6,
                              answer_prefix=ex.answer_prefix, context_key=ex.meta["cluster"])
            for ex in examples]


@pytest.mark.parametrize("policy,budget", [("snapkv", 0.5), ("streamingllm", 0.3),
                                           ("int4", 0.3), ("snapkv+int4", 0.2)])
def test_a_copied_context_answers_as_a_fresh_prefill(engine, questions, policy, budget):
    reused = [engine.generate(replace(q, policy=policy, budget=budget)) for q in questions]
    fresh = [engine.generate(replace(q, policy=policy, budget=budget, context_key=None))
             for q in questions]
    assert [r.raw["token_ids"] for r in reused] == [f.raw["token_ids"] for f in fresh]
    assert [r.kv_bytes for r in reused] == [f.kv_bytes for f in fresh]
    assert [r.notes["context_reused"] for r in reused] == [False, True, True]
    assert "context_reused" not in fresh[0].notes


def test_a_shared_prefill_group_is_held_and_copied_too(engine, questions):
    settings = [Setting("snapkv", 0.5), Setting("streamingllm", 0.5), Setting("knorm", 0.25)]
    reused = [generate_settings(engine, q, settings) for q in questions]
    fresh = [generate_settings(engine, replace(q, context_key=None), settings) for q in questions]
    for held, new in zip(reused, fresh):
        assert {s: r.raw["token_ids"] for s, r in held.items()} == \
            {s: r.raw["token_ids"] for s, r in new.items()}
    assert [r[settings[0]].notes["context_reused"] for r in reused] == [False, True, True]


def test_another_context_or_setting_is_never_served_from_the_copy(engine, questions):
    first = replace(questions[0], policy="snapkv", budget=0.5)
    engine.generate(first)
    other = engine.generate(replace(first, budget=0.25))  # same context, another budget
    assert other.notes["context_reused"] is False
    moved = engine.generate(replace(first, context="the river ran. " + first.context))
    assert moved.notes["context_reused"] is False  # same key, other text: no match


def test_the_run_counts_contexts_and_asks_each_question(home, tmp_path):
    cfg = write_config(tmp_path / "q.yaml",
                       dataset={"name": "synthetic", "task": "niah_multikey", "lengths": [128, 256],
                                "n_per_bin": 2, "seed": 0, "questions_per_context": 3})
    result = CliRunner().invoke(app, ["all", "-c", str(cfg), "--no-progress"])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(home / "runs" / "tiny" / "kv_transition.sqlite")
    entries = conn.execute(
        "SELECT m.bin_idx, e.example_id, e.context, e.meta_json FROM manifest_entries m "
        "JOIN examples e USING(example_id) ORDER BY m.entry_id").fetchall()
    assert len(entries) == 2 * 2 * 3  # bins x contexts x questions
    for i in range(0, len(entries), 3):  # each context followed by its further questions
        group = entries[i:i + 3]
        assert len({(b, ctx) for b, _, ctx, _ in group}) == 1
        assert [json.loads(m)["question"] for *_, m in group] == [0, 1, 2]
    clusters = conn.execute("SELECT n, n_clusters FROM bin_stats").fetchall()
    assert clusters and all(row == (6, 2) for row in clusters)
    notes = [json.loads(n) for (n,) in conn.execute("SELECT notes_json FROM telemetry")]
    assert sum(n["context_reused"] for n in notes) == 2 * len(notes) // 3


def test_only_the_generator_asks_several_questions(tmp_path, home):
    cfg = write_config(tmp_path / "lb.yaml",
                       dataset={"name": "longbench", "task": "hotpotqa", "path": str(tmp_path),
                                "questions_per_context": 2})
    result = CliRunner().invoke(app, ["prepare", "-c", str(cfg)])
    assert result.exit_code == 2
    assert "questions_per_context" in result.output and "synthetic" in result.output


def test_the_press_tour_runs_end_to_end(home):
    # config/experiments/press_tour.yaml, shrunk: AdaKV around SnapKV, a decoding press, a token
    # budget and several questions per context in one run, every setting answered
    cfg = REPO / "config" / "experiments" / "press_tour.yaml"
    small = ["--set", "dataset.lengths=[160]", "--set", "dataset.n_per_bin=2",
             "--set", "binning.n_bins=1", "--set", "decoding.max_tokens=6", "--no-progress"]
    result = CliRunner().invoke(app, ["all", "-c", str(cfg), *small])
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(home / "runs" / "press_tour" / "kv_transition.sqlite")
    runs = conn.execute(  # (the random-weight model's answers are wrong, not errors)
        "SELECT r.kv_policy, r.kv_budget, COUNT(s.request_id), "
        "SUM(s.finish_reason IN ('error', 'timeout')) FROM runs r JOIN requests q "
        "USING(run_id) LEFT JOIN responses s USING(request_id) GROUP BY 1, 2").fetchall()
    assert {(p, b) for p, b, *_ in runs} == {
        ("full", 1.0), ("snapkv", 0.5), ("snapkv", 128.0), ("adakv_snapkv", 0.5),
        ("adakv_snapkv", 128.0), ("decoding_knorm", 0.5), ("decoding_knorm", 128.0)}
    assert all(answered == 6 and errors == 0 for *_, answered, errors in runs)
    verdicts = conn.execute("SELECT kv_policy, passed FROM integrity_checks").fetchall()
    assert verdicts and all(passed for _, passed in verdicts)
