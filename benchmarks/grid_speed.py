"""Grid speed: one shared prefill per example vs a fresh prefill per budget.

Same grid, same process, same examples (the default config's manifest): one policy at budgets
1.0 / 0.75 / 0.5 / 0.25 / 0.1. Prints a table, writes it under benchmarks/results/, and ends
with `identical answers: yes|no` and `speedup: N.NNx`.

    .venv/bin/python benchmarks/grid_speed.py [--config config/default.yaml] [--policy snapkv]
        [--set model.init=random --set model.shape=reference-4m]   # the bundled model's shape
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import torch

from kv_transition import paths, pipeline
from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.engines.shared_prefill import generate_settings
from kv_transition.settings import load_settings

BUDGETS = (1.0, 0.75, 0.5, 0.25, 0.1)
RESULTS = Path(__file__).parent / "results"


def _examples(settings, home: Path) -> list[sqlite3.Row]:
    exp = pipeline.Experiment(settings, home)
    pipeline.prepare(exp)
    conn = exp.connect()
    return conn.execute(
        "SELECT e.context, e.question, e.meta_json, m.bin_idx FROM manifest_entries m "
        "JOIN examples e USING(dataset_id, example_id) ORDER BY m.entry_id").fetchall()


def _request(row, settings, policy: str, budget: float) -> GenerationRequest:
    import json

    return GenerationRequest(
        context=row["context"], question=row["question"], max_tokens=settings.decoding.max_tokens,
        policy=policy if budget < 1.0 else "full", budget=budget,
        query_aware=settings.kv.query_aware,
        answer_prefix=json.loads(row["meta_json"]).get("answer_prefix", ""))


def run(config: str, policy: str, home: Path, overrides: list[str]) -> list[str]:
    settings = load_settings(config, [*overrides, f"output.exp_group_id=grid_speed_{policy}"])
    rows = _examples(settings, home)
    engine = HFEngine(settings.model, settings.kv.press, paths.models_dir(home))
    grid = [("full", 1.0)] + [(policy, b) for b in BUDGETS if b < 1.0]
    engine.warmup(policy, 0.5)
    fresh_answers, shared_answers = [], []
    fresh_s = shared_s = 0.0
    for row in rows:  # interleaved, so background load hits both paths alike
        start = time.perf_counter()
        for budget in BUDGETS:
            fresh_answers.append(engine.generate(_request(row, settings, policy, budget)).raw["token_ids"])
        mid = time.perf_counter()
        out = generate_settings(engine, _request(row, settings, policy, 1.0), grid)
        shared_answers += [out[s].raw["token_ids"] for s in grid]
        fresh_s += mid - start
        shared_s += time.perf_counter() - mid
    n = len(rows)
    identical = fresh_answers == shared_answers
    lines = [
        f"# grid speed: {policy}, budgets {', '.join(map(str, BUDGETS))}, {n} examples "
        f"({settings.model.shape or settings.model.name}, {engine.device}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "",
        "| path | prefills | wall s | s / example |",
        "|---|---|---|---|",
        f"| fresh prefill per budget | {n * len(BUDGETS)} | {fresh_s:.2f} | {fresh_s / n:.3f} |",
        f"| one shared prefill | {n} | {shared_s:.2f} | {shared_s / n:.3f} |",
        "",
        f"prefill ratio: {len(BUDGETS):.2f}x",
        f"identical answers: {'yes' if identical else 'no'}",
        f"speedup: {fresh_s / shared_s:.2f}x",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/default.yaml")
    parser.add_argument("--policy", default="snapkv")
    parser.add_argument("--home", default=None, help="default: a temporary directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override key.path=value, as on the CLI")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = run(args.config, args.policy, Path(args.home or tmp), args.overrides)
    RESULTS.mkdir(exist_ok=True)
    shape = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("model.shape=")), "")
    (RESULTS / f"grid_speed_{args.policy}{'_' + shape if shape else ''}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
