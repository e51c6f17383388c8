"""Added latency of quantized KV caches per decoding step, relative to the 16-bit cache.

One attention layer of a Llama-3.1-8B shape (8 KV heads, 32 query heads, head_dim 128) holds a
prefilled context; each timed decoding step appends one token through the cache's ``update``
(dequantize the history, quantize what leaves the residual) and runs the attention of one query
over what ``update`` returned. ``full`` is transformers' ``DynamicLayer`` in the cache dtype. Medians over
``--steps`` steps after warm-up; the added time is per layer and per step (multiply by the
number of layers for a whole model). On CPU the cache dtype is float32 (the engine's CPU
default: CPUs have no fast float16 matmul); on CUDA it is float16.

    .venv/bin/python benchmarks/quant_overhead.py [--device cpu|cuda] [--lengths 1024,4096]

Prints a Markdown table and writes it to benchmarks/results/quant_overhead_<device>.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from kv_transition.kv.quant.adaptive import AdaptiveKVLayer
from kv_transition.kv.quant.cache import QuantizedKVLayer
from kv_transition.policy.quant import parse_quant, resolve_widths
from kv_transition.policy.widths import reference_bytes
from kv_transition.settings import QuantConfig

KV_HEADS, Q_HEADS, HEAD_DIM = 8, 32, 128
POLICIES = ("full", "int8", "int4", "int2", "kivi-k4v4", "kivi-k2v4", "kivi-k2v2",
            "adaptive@0.25")
RESULTS = Path(__file__).parent / "results"


def _layer(policy: str, cfg: QuantConfig):
    if policy == "full":
        return DynamicLayer()
    name, _, budget = policy.partition("@")
    if name == "adaptive":
        return AdaptiveKVLayer(float(budget), cfg.group_size, cfg.sink_tokens, cfg.window)
    spec, _ = resolve_widths(parse_quant(name, cfg), 1.0, cfg, HEAD_DIM)
    return QuantizedKVLayer(spec)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prefilled(policy: str, n: int, cfg: QuantConfig, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    k, v = (torch.randn(1, KV_HEADS, n, HEAD_DIM, generator=g, device=device, dtype=dtype)
            for _ in range(2))
    layer = _layer(policy, cfg)
    layer.update(k, v)
    if isinstance(layer, AdaptiveKVLayer):  # recency as importance: no model to score with
        layer.seal(torch.linspace(0.0, 1.0, n, device=device))
    elif isinstance(layer, QuantizedKVLayer):
        layer.seal()
    return layer


def _step(layer, q, k, v) -> None:
    keys, values = layer.update(k, v)
    F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)


def _stored(layer) -> int:
    if hasattr(layer, "stored_bytes"):
        return layer.stored_bytes()
    return layer.keys.nbytes + layer.values.nbytes


def time_policy(policy: str, n: int, steps: int, cfg: QuantConfig, dtype, device) -> dict:
    layer = _prefilled(policy, n, cfg, dtype, device)
    g = torch.Generator(device=device).manual_seed(1)
    new = lambda h: torch.randn(1, h, 1, HEAD_DIM, generator=g, device=device, dtype=dtype)  # noqa: E731
    times = []
    for i in range(steps + 5):
        q, k, v = new(Q_HEADS), new(KV_HEADS), new(KV_HEADS)
        _sync(device)
        start = time.perf_counter()
        _step(layer, q, k, v)
        _sync(device)
        if i >= 5:  # the first steps pay for lazy initialisation
            times.append(time.perf_counter() - start)
    total = n + steps + 5
    # true ratio of what the layer holds against a 16-bit cache of the same tokens
    ratio = _stored(layer) / reference_bytes(total, HEAD_DIM, KV_HEADS)
    return {"ms": 1000 * statistics.median(times), "ratio": ratio}


def run(device: torch.device, lengths: list[int], steps: int) -> list[str]:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    cfg = QuantConfig()
    import os

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    lines = [f"device: {device} ({name}), torch {torch.__version__}, "
             f"{torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f} at "
             f"start, cache dtype "
             f"{str(dtype).split('.')[-1]}; one layer: {KV_HEADS} KV heads, {Q_HEADS} query "
             f"heads, head_dim {HEAD_DIM}; group {cfg.group_size}, KIVI residual "
             f"{cfg.residual_length}; median of {steps} decoding steps", "",
             "| context | policy | step ms | full step ms | added ms | x full | true ratio vs 16-bit |",
             "|---|---|---|---|---|---|---|"]
    with torch.inference_mode():
        for n in lengths:
            base = time_policy("full", n, steps, cfg, dtype, device)
            for policy in POLICIES:
                r = base if policy == "full" else time_policy(policy, n, steps, cfg, dtype,
                                                               device)
                lines.append(f"| {n} | {policy} | {r['ms']:.3f} | {base['ms']:.3f} | "
                             f"{r['ms'] - base['ms']:+.3f} | {r['ms'] / base['ms']:.2f} | "
                             f"{r['ratio']:.4f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--lengths", default="1024,4096", help="context lengths")
    parser.add_argument("--steps", type=int, default=40, help="timed decoding steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lines = run(device, [int(x) for x in args.lengths.split(",")], args.steps)
    threads = f" --threads {args.threads}" if args.threads else ""
    text = "\n".join(lines) + "\n\nCommand: `.venv/bin/python benchmarks/quant_overhead.py " \
        f"--device {args.device} --lengths {args.lengths} --steps {args.steps}{threads}`\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"quant_overhead_{device.type}.md").write_text(text)


if __name__ == "__main__":
    main()
