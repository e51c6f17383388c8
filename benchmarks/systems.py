"""Systems mode: prefill and decode latency, peak memory and KV bytes at real shapes.

A random-weight model of a named architecture (engines/shapes.py) runs one context of each
length under each policy and budget. Timing discipline: a warm-up per setting, CUDA
synchronisation around every timed region, medians over repetitions and over decode steps, and
beside each decode latency its physical floor, (weight bytes + KV bytes) / memory bandwidth.
The last column compares one shared prefill for all budgets of a policy with a prefill per budget.

    # GPU (bf16, the issue's grid)
    python benchmarks/systems.py --shape llama-3.1-8b --device cuda --dtype bfloat16 \
        --lengths 8192 32768 65536 --budgets 1.0 0.5 0.2 --policies snapkv streamingllm
    # CPU smoke of the same code path
    python benchmarks/systems.py --shape tiny-llama --device cpu --dtype float32 --lengths 1024 4096
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from kv_transition.engines.hf import HFEngine
from kv_transition.engines.shapes import weight_bytes
from kv_transition.engines.shared_prefill import prefill_settings
from kv_transition.settings import ModelConfig, PressConfig

RESULTS = Path(__file__).parent / "results"
# HBM bandwidth by device name (vendor datasheets), for the decode floor
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def _bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in BANDWIDTH.items() if key in name), None)


def _peak_above(engine, base: int) -> float | None:
    if engine.device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(engine.device) - base) / 2**30


def measure(engine, n_tokens: int, policy: str, budget: float, reps: int, decode_tokens: int):
    gen = torch.Generator().manual_seed(n_tokens)
    ids = torch.randint(10, engine.model.config.vocab_size, (1, n_tokens), generator=gen)
    ids = ids.to(engine.device)
    base = torch.cuda.memory_allocated(engine.device) if engine.device.type == "cuda" else 0
    engine.prefill(ids[:, :1024], policy, budget)  # warm-up of this setting's kernels
    prefill_s, step_s, kv = [], [], 0
    for _ in range(reps):
        engine.reset_peak()
        state = engine.prefill(ids, policy, budget)
        prefill_s.append(state.seconds)
        kv = state.kv_bytes
        _, _, steps = engine.decode(state, decode_tokens, 0.0, 0)
        step_s += steps[1:]
        del state
    return statistics.median(prefill_s), statistics.median(step_s), kv, _peak_above(engine, base)


def shared_vs_fresh(engine, n_tokens: int, policy: str, budgets: list[float], reps: int) -> float:
    """Median ratio: a prefill per budget vs one shared prefill for all of them (warmed up)."""
    ids = torch.randint(10, engine.model.config.vocab_size, (1, n_tokens)).to(engine.device)
    settings = [(policy if b < 1 else "full", b) for b in budgets]
    ratios = []
    for rep in range(reps + 1):  # the first round is the warm-up
        start = engine.now()
        for p, b in settings:
            engine.prefill(ids, p, b)
        fresh = engine.now() - start
        start = engine.now()
        prefill_settings(engine, ids, settings)
        if rep:
            ratios.append(fresh / (engine.now() - start))
    return statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="tiny-llama")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--policies", nargs="+", default=["snapkv", "streamingllm"])
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--models-root", default="data/models")
    args = ap.parse_args()
    cfg = ModelConfig(name=f"random:{args.shape}", init="random", shape=args.shape,
                      device=args.device, dtype=args.dtype)
    engine = HFEngine(cfg, PressConfig(), Path(args.models_root))
    weights = weight_bytes(engine.model)
    bw = _bandwidth(engine.device)
    dev = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "cpu"
    lines = [f"# systems: {args.shape}, {engine.dtype}, {dev}, weights {weights / 2**30:.2f} GiB, "
             f"torch {torch.__version__}, reps {args.reps}, {args.decode_tokens} decode tokens",
             "", "| tokens | policy | budget | prefill s (median) | decode ms/token (median) | "
             "floor ms/token | KV MiB | peak above weights GiB | shared-prefill speedup |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in args.lengths:
        for policy in args.policies:
            ratio = shared_vs_fresh(engine, n, policy, args.budgets, args.reps)
            for budget in args.budgets:
                p = policy if budget < 1 else "full"
                pre, step, kv, peak = measure(engine, n, p, budget, args.reps, args.decode_tokens)
                floor = f"{(weights + kv) / bw * 1e3:.2f}" if bw else "n/a"
                peak_txt = f"{peak:.2f}" if peak is not None else "n/a (CPU)"
                lines.append(f"| {n} | {p} | {budget} | {pre:.3f} | {step * 1e3:.2f} | {floor} | "
                             f"{kv / 2**20:.1f} | {peak_txt} | {ratio:.2f}x |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"systems_{args.shape}_{engine.device.type}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
