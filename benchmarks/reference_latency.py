"""Per-request latency of the reference architecture on CPU, through the project's hf engine.

Latency does not depend on what the weights learned, only on the shape and on how many
tokens are decoded, so this runs before any training: a randomly initialised model of the
chosen size, real generated prompts, and ``max_tokens`` set to the length of the correct
answer plus EOS (what a trained model decodes before it stops). Issue 3's target: at most
1 s per request at 4096 tokens on 2 CPU cores.

    .venv/bin/python benchmarks/reference_latency.py [--size reference] [--n 10]

Prints a Markdown table and writes it to benchmarks/results/reference_latency.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from kv_transition.data.synthetic import generate_examples
from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.reference import formats
from kv_transition.reference.evaluate import setting_name
from kv_transition.reference.model import hardware, model_config, save_tokenizer, word_tokenizer
from kv_transition.settings import SYNTHETIC_TASKS, ModelConfig, PressConfig

RESULTS = Path(__file__).parent / "results" / "reference_latency.md"


def _build(size: str, out: Path) -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(model_config(size, word_tokenizer())).save_pretrained(out)
    save_tokenizer(out)


def _requests(engine: HFEngine, length: int, n: int, policy: str, budget: float):
    """One text-format request per example, decoding exactly the correct answer's tokens."""
    for task in SYNTHETIC_TASKS:
        for ex in generate_examples(task, length, n, 0, engine.count_tokens):
            target = formats.text_answer(ex.answers)  # what the trained model writes
            yield GenerationRequest(context=ex.context, question=ex.question,
                                    answer_prefix=ex.answer_prefix, policy=policy, budget=budget,
                                    max_tokens=engine.count_tokens(target) + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="reference")
    parser.add_argument("--n", type=int, default=4, help="examples per task and length")
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    settings = [("full", 1.0), ("snapkv", 0.2)]
    rows = ["| context tokens | setting | n | p50 s | p95 s | max s | prefill p50 s | "
            "decode ms/token p50 | decoded tokens (mean) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        _build(args.size, Path(tmp) / "m")
        engine = HFEngine(ModelConfig(name=str(Path(tmp) / "m"), dtype="float32", device="cpu"),
                          PressConfig(), Path(tmp))
        for policy, budget in settings:
            engine.warmup(policy, budget)
            for length in lengths:
                lat, toks, prefill, per_token = [], [], [], []
                for req in _requests(engine, length, args.n, policy, budget):
                    result = engine.generate(req)
                    lat.append(result.latency_s)
                    toks.append(result.completion_tokens)
                    prefill.append(result.prefill_s)
                    per_token.append(result.notes.get("decode_s_per_token_median") or 0.0)
                lat.sort()
                p95 = lat[int(0.95 * (len(lat) - 1))]
                rows.append(f"| {length} | {setting_name(policy, budget)} | {len(lat)} | "
                            f"{statistics.median(lat):.2f} | {p95:.2f} | {lat[-1]:.2f} | "
                            f"{statistics.median(prefill):.2f} | "
                            f"{1000 * statistics.median(per_token):.1f} | "
                            f"{statistics.mean(toks):.1f} |")
                print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    header = (f"Reference architecture `{args.size}`, random weights, float32, "
              f"{args.threads} torch threads on {hardware('cpu')}; 1-min load average at the end "
              f"{load:.1f} (other processes inflate the numbers). Command: "
              f"`.venv/bin/python benchmarks/reference_latency.py --size {args.size} --n {args.n} "
              f"--lengths {args.lengths} --threads {args.threads}`\n\n")
    table = header + "\n".join(rows) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
