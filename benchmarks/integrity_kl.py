"""How far does a press move the next-token distribution at a mild budget, integrated correctly
and broken? The measurement behind ``kv.integrity.max_kl`` (engines/integrity.py).

On a model with sliding-window layers (Gemma 3), for each press and warm-up prompt (the
integrity check's own: a synthetic needle task of 256 tokens, one seed per prompt): the KL in
nats from the full cache's next-token distribution to the press's at ``--budget`` (0.9, the
check's mild budget), (a) through the harness's integration (``kv/bounded.py``: only the global
layers compressed, window-bounded sliding layers) and (b) broken as issue 16 found it (the
press entered the way kvpress does by itself, on every layer, with a plain cache). A threshold
between the largest (a) and the smallest (b) separates them.

    .venv/bin/python benchmarks/integrity_kl.py --model builtin:gemma-3-270m --home /tmp/kvt \\
        --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import contextmanager
from pathlib import Path

import torch

from kv_transition.data.synthetic import make_example
from kv_transition.engines.base import GenerationRequest
from kv_transition.engines.hf import HFEngine
from kv_transition.engines.session import attention_mode
from kv_transition.paths import models_dir
from kv_transition.settings import ModelConfig, PressConfig

PRESSES = ["snapkv", "streamingllm", "knorm", "tova", "expected_attention", "pyramidkv",
           "random"]


@contextmanager
def broken_integration():
    """kvpress on every layer with a plain cache: the integration the check must stop."""
    from transformers import DynamicCache

    import kv_transition.kv.bounded as bounded
    import kv_transition.kv.quant.cache as cache

    saved = cache.applying, bounded.new_cache
    cache.applying = lambda press, model: press(model)
    bounded.new_cache = lambda config: DynamicCache()
    try:
        yield
    finally:
        cache.applying, bounded.new_cache = saved


def _ids(engine: HFEngine, seed: int):
    ex = make_example("integrity", "niah_single", 0, 256, seed, 0.5, engine.count_tokens)
    return engine.encode(GenerationRequest(ex.context, ex.question, max_tokens=1,
                                           answer_prefix=ex.answer_prefix))


@torch.inference_mode()
def _logprobs(engine: HFEngine, ctx, q, policy: str, budget: float) -> torch.Tensor:
    state = engine.prefill(ctx, policy, budget)
    engine.extend(state, q)
    return torch.log_softmax(state.next_logits.float(), -1)


def _kl(full: torch.Tensor, other: torch.Tensor) -> float:
    return float(torch.sum(full.exp() * (full - other)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:gemma-3-270m")
    ap.add_argument("--home", type=Path, default=Path("."))
    ap.add_argument("--budget", type=float, default=0.9)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--presses", nargs="+", default=PRESSES)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = HFEngine(ModelConfig(name=args.model, device="cpu", dtype="float32"), PressConfig(),
                      models_dir(args.home))
    prompts = [_ids(engine, seed) for seed in args.seeds]
    print(f"model {args.model} ({type(engine.model).__name__}), budget {args.budget}, "
          f"warm-up prompts: seeds {args.seeds}\n")
    print("| press | correct: median KL | correct: max KL | broken: min KL | broken: median KL |")
    print("|---|---:|---:|---:|---:|")
    for policy in args.presses:
        good, bad, raised = [], [], ""
        with attention_mode(engine.model, policy):
            for ctx, q in prompts:
                full = _logprobs(engine, ctx, q, "full", 1.0)
                good.append(_kl(full, _logprobs(engine, ctx, q, policy, args.budget)))
                with broken_integration():
                    try:
                        bad.append(_kl(full, _logprobs(engine, ctx, q, policy, args.budget)))
                    except (AttributeError, RuntimeError, ValueError, IndexError) as exc:
                        raised = f"raises {exc.__class__.__name__}"  # the check stops it too
        broken = (f"{min(bad):.4f} | {statistics.median(bad):.4f}" if bad
                  else f"{raised} | {raised}")
        print(f"| {policy} | {statistics.median(good):.4f} | {max(good):.4f} | {broken} |",
              flush=True)


if __name__ == "__main__":
    main()
