"""What the hf engine adds over a bare transformers loop, per thread count.

Issue 16 measured a real model decoding at 1.2-1.5 s per token through the harness while a bare
loop took 0.8 s under similar load. This script times, on the same model, prompt and greedy
tokens, (a) a bare loop: one forward over the prompt, then one forward per token with a
``DynamicCache``; (b) ``HFEngine.generate`` at the full cache (template, prefill, extend,
decode, accounting); for each thread count given. It prints a table; medians over ``--reps``.

    .venv/bin/python benchmarks/engine_overhead.py --model builtin:tiny-random --threads 1 2
    .venv/bin/python benchmarks/engine_overhead.py --model /path/to/gemma-3-270m --threads 1 2

Run it on an idle machine: two threads on a loaded 2-core machine are slower than one, which
is what the table is for (set ``model.threads`` from it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from kv_transition.data.synthetic import make_example
from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.paths import models_dir
from kv_transition.settings import ModelConfig, PressConfig


def _request(engine: HFEngine, tokens: int, new_tokens: int) -> GenerationRequest:
    ex = make_example("overhead", "niah_single", 0, tokens, 0, 0.5, engine.count_tokens)
    return GenerationRequest(ex.context, ex.question, max_tokens=new_tokens,
                             answer_prefix=ex.answer_prefix)


@torch.inference_mode()
def bare_loop(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, median seconds per decoded token) with plain transformers calls."""
    from transformers import DynamicCache

    cache = DynamicCache()
    start = time.perf_counter()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    prefill = time.perf_counter() - start
    token = out.logits[0, -1].argmax().view(1, 1)
    steps = []
    for _ in range(new_tokens - 1):
        start = time.perf_counter()
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        token = out.logits[0, -1].argmax().view(1, 1)
        steps.append(time.perf_counter() - start)
    return prefill, statistics.median(steps) if steps else float("nan")


def measure(engine: HFEngine, req: GenerationRequest, reps: int) -> dict[str, float]:
    ctx, q = engine.encode(req)
    ids = torch.cat([ctx, q], dim=1)
    bare = [bare_loop(engine.model, ids, req.max_tokens) for _ in range(reps)]
    ours = [engine.generate(req) for _ in range(reps)]
    return {"tokens": ids.shape[1],
            "bare_prefill": statistics.median(b[0] for b in bare),
            "bare_step": statistics.median(b[1] for b in bare),
            "engine_prefill": statistics.median(r.prefill_s for r in ours),
            "engine_step": statistics.median(r.notes["decode_s_per_token_median"] or float("nan")
                                             for r in ours)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny-random")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--home", type=Path, default=Path("."))
    args = ap.parse_args()
    print(f"model {args.model}, {args.dtype}, context ~{args.tokens} tokens, "
          f"{args.new_tokens} greedy tokens, median of {args.reps}\n")
    print("| threads | prompt tokens | bare prefill (s) | engine prefill (s) | "
          "bare ms/token | engine ms/token | engine / bare per token |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        cfg = ModelConfig(name=args.model, dtype=args.dtype, device="cpu", threads=threads)
        engine = HFEngine(cfg, PressConfig(), models_dir(args.home))
        req = _request(engine, args.tokens, args.new_tokens)
        engine.generate(req)  # warm-up: lazy init off the clock
        m = measure(engine, req, args.reps)
        print(f"| {threads} | {m['tokens']} | {m['bare_prefill']:.3f} | "
              f"{m['engine_prefill']:.3f} | {1000 * m['bare_step']:.1f} | "
              f"{1000 * m['engine_step']:.1f} | {m['engine_step'] / m['bare_step']:.2f} |",
              flush=True)
        engine.close()


if __name__ == "__main__":
    main()
