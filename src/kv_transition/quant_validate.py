"""``kv-transition quant-validate``: does each quantized cache store and reconstruct what it says?

* ``--memory-only`` (no model): per policy, the payload ratio (bits/16) and the true ratio at
  each context length for a head_dim, group size and residual, with a 16-bit residual.
* with a model: one full-cache prefill of a synthetic prompt per length gives the reference
  keys and values and each layer's last queries; then every policy prefills the same prompt
  through the engine's own code path, and per layer we measure the relative MSE and the max
  error of keys and values and the relative error of the attention output of those queries.
  The expected ordering fp16 < int8 < int4 < int2 must hold for keys and values in every layer,
  otherwise ``QuantOrderingError`` is raised after the results are stored.

Rows go to the ``quant_validation`` table and a Markdown table (printed, and written to
``runs/<exp_group_id>/quant_validate.md``) when an experiment config is given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from kv_transition import paths
from kv_transition.data.synthetic import generate_examples
from kv_transition.db.connect import transaction
from kv_transition.engines.base import GenerationRequest
from kv_transition.errors import BadInput
from kv_transition.kv.quant.accounting import cache_accounting, kv_shape
from kv_transition.pipeline import record_experiment
from kv_transition.policy.quant import parse_quant, resolve_widths
from kv_transition.policy.widths import LayerSpec, TensorSpec, payload_ratio, token_group, true_ratio
from kv_transition.settings import QuantConfig

ORDERED = ("fp16", "int8", "int4", "int2")  # reconstruction error must grow along this list
MEMORY_POLICIES = ("fp16", "int8", "int4", "int3", "int2", "kivi-k4v4", "kivi-k2v4", "kivi-k2v2")
MODEL_POLICIES = ("fp16", "int8", "int4", "int3", "int2", "kivi-k4v4", "kivi-k2v4", "kivi-k2v2",
                  "adaptive@0.5")  # budget-driven policies carry their budget after '@' 
MEMORY_LENGTHS = (512, 4096, 32768)
MODEL_LENGTHS = (512,)
QUERY_WINDOW = 32  # last prompt queries whose attention output is compared


class QuantOrderingError(Exception):
    """The error ordering fp16 < int8 < int4 < int2 broke: something is wrong, not the input."""

    def __init__(self, message: str, validation: "Validation"):
        super().__init__(message)
        self.validation = validation


@dataclass
class Options:
    memory_only: bool = False
    head_dim: int | None = None
    group_size: int | None = None
    residual: int | None = None
    lengths: list[int] | None = None


@dataclass
class Validation:
    rows: list[dict[str, Any]] = field(default_factory=list)
    markdown: str = ""
    violations: list[str] = field(default_factory=list)
    path: Any = None


def parse_lengths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        lengths = []
    if not lengths or any(n < 1 for n in lengths):
        raise BadInput(f"--lengths {text!r}: expected comma-separated token counts >= 1, "
                       "e.g. 512,4096,32768")
    return sorted(set(lengths))


def _quant_cfg(base, opts: Options):
    """The config's kv.quant with the command-line overrides, validated like the config."""
    from pydantic import ValidationError

    data = (base or QuantConfig()).model_dump()
    flags = {"group_size": ("--group-size", opts.group_size),
             "residual_length": ("--residual", opts.residual)}
    given = [flag for key, (flag, value) in flags.items() if value is not None]
    data.update({key: value for key, (_, value) in flags.items() if value is not None})
    try:
        return QuantConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = " / ".join(given + ["kv.quant"])
        raise BadInput(f"{where}: {err['msg']}") from None


# ---------------------------------------------------------------- memory only

def _memory_spec(policy: str, cfg, head_dim: int) -> LayerSpec:
    if policy == "fp16":
        exact = TensorSpec(16, "token", head_dim)
        return LayerSpec(exact, exact, 0)
    quant = parse_quant(policy, cfg)
    return resolve_widths(quant, 1.0, cfg, head_dim)[0]


def _true(n: int, head_dim: int, spec: LayerSpec) -> float:
    if spec.key.bits == 16:
        return 1.0
    return true_ratio(n, head_dim, spec)


def memory_rows(cfg, head_dim: int, lengths: list[int]) -> list[dict[str, Any]]:
    if head_dim < 8 or head_dim % 8 or token_group(head_dim, cfg.group_size) is None:
        raise BadInput(f"--head-dim {head_dim}: must be a positive multiple of 8")
    rows = []
    for policy in MEMORY_POLICIES:
        spec = _memory_spec(policy, cfg, head_dim)
        payload = 1.0 if spec.key.bits == 16 else payload_ratio(spec)
        for n in lengths:
            rows.append({"mode": "memory", "policy": policy, "context_tokens": n, "layer": -1,
                         "head_dim": head_dim, "payload_ratio": payload,
                         "true_ratio": _true(n, head_dim, spec), "params": _spec_params(spec)})
    return rows


def _spec_params(spec: LayerSpec) -> dict[str, Any]:
    if spec.key.bits == 16:
        return {"bits": 16}
    return {"key": [spec.key.bits, spec.key.axis, spec.key.group],
            "value": [spec.value.bits, spec.value.axis, spec.value.group],
            "residual": spec.residual}


def memory_markdown(rows: list[dict[str, Any]], cfg, head_dim: int) -> str:
    lengths = sorted({r["context_tokens"] for r in rows})
    head = (f"Memory against a 16-bit cache: head_dim {head_dim}, group size {cfg.group_size}, "
            f"KIVI residual {cfg.residual_length} tokens (16-bit). Payload = code bits / 16; "
            "true = packed codes + float16 scale and zero-point per group + residual.\n\n")
    lines = ["| policy | payload | " + " | ".join(f"true @{n}" for n in lengths) + " |",
             "|---|---|" + "---|" * len(lengths)]
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = {r["context_tokens"]: r for r in rows if r["policy"] == policy}
        cells = " | ".join(f"{mine[n]['true_ratio']:.4f}" for n in lengths)
        lines.append(f"| {policy} | {mine[lengths[0]]['payload_ratio']:.4f} | {cells} |")
    return head + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- with a model

def _prompt_ids(engine, n: int, seed: int):
    import torch

    example = generate_examples("niah_single", n, 1, seed, engine.count_tokens)[0]
    ctx, q = engine.encode(GenerationRequest(context=example.context, question=example.question,
                                             max_tokens=1, answer_prefix=example.answer_prefix))
    return torch.cat([ctx, q], dim=1)


def _capture(engine, ids, window: int):
    """Full-cache prefill: the reference cache and each layer's last ``window`` queries."""
    from kvpress.utils import get_prerope_query_states
    from transformers.models.llama.modeling_llama import rotate_half

    from kv_transition.kv.quant.cache import attention_modules  # lazy: imports torch

    queries: dict[int, Any] = {}

    def hook(module, args, kwargs, output):
        hidden = kwargs["hidden_states"][:, -window:]
        q = get_prerope_query_states(module, hidden)
        cos, sin = (t[:, -window:].unsqueeze(1) for t in kwargs["position_embeddings"])
        queries[module.layer_idx] = q * cos + rotate_half(q) * sin
        return output

    handles = [m.register_forward_hook(hook, with_kwargs=True)
               for m in attention_modules(engine.model)]
    try:
        state = engine.prefill(ids, "full", 1.0)
    finally:
        for h in handles:
            h.remove()
    return state.cache, queries


def _attention(q, k, v):
    """Causal attention output of the last queries over all keys (GQA heads repeated)."""
    import torch

    groups = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(groups, dim=1) for t in (k, v))
    w, n = q.shape[2], k.shape[2]
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    future = torch.arange(n, device=q.device)[None, :] > torch.arange(n - w, n, device=q.device)[:, None]
    return torch.softmax(scores.masked_fill(future, -torch.inf), dim=-1) @ v


def _errors(ref_k, ref_v, k, v, q) -> dict[str, float]:
    def rel_mse(a, b):
        return float(((a.float() - b.float()) ** 2).sum() / (a.float() ** 2).sum().clamp_min(1e-30))

    out_ref, out = _attention(q, ref_k, ref_v), _attention(q, k, v)
    return {"rel_mse_k": rel_mse(ref_k, k), "rel_mse_v": rel_mse(ref_v, v),
            "max_err_k": float((ref_k.float() - k.float()).abs().max()),
            "max_err_v": float((ref_v.float() - v.float()).abs().max()),
            "attn_rel_err": float((out_ref - out).norm() / out_ref.norm().clamp_min(1e-30))}


def _policy_budget(policy: str, cfg) -> tuple[str, float]:
    """(policy name, budget): a fixed width runs at its nominal budget, others at '@budget'."""
    name, _, budget = policy.partition("@")
    quant = parse_quant(name, cfg)
    return name, quant.nominal if quant.fixed else float(budget)


def _policy_kv(engine, ids, policy: str, cfg, ref_cache):
    """Per-layer (keys, values) as the policy's cache holds them, and its measured ratios."""
    import torch

    if policy == "fp16":  # what a 16-bit cache stores
        kv = [(layer.keys.to(torch.float16), layer.values.to(torch.float16))
              for layer in ref_cache.layers]
        return kv, {"kv_ratio_true": 1.0, "kv_ratio_payload": 1.0}, {}
    state = engine.prefill(ids, *_policy_budget(policy, cfg))
    kv = [layer.materialize() for layer in state.cache.layers]
    acc = cache_accounting(state.cache, ids.shape[1], engine.model.config, engine.dtype)
    return kv, acc, state.applied


def model_rows(engine, cfg, lengths: list[int], seed: int) -> list[dict[str, Any]]:
    head_dim = kv_shape(engine.model.config)[2]
    rows = []
    for n in lengths:
        ids = _prompt_ids(engine, n, seed)
        ref_cache, queries = _capture(engine, ids, min(QUERY_WINDOW, ids.shape[1]))
        for policy in MODEL_POLICIES:
            kv, acc, applied = _policy_kv(engine, ids, policy, cfg, ref_cache)
            per_layer = []
            for i, (k, v) in enumerate(kv):
                ref = ref_cache.layers[i]
                errs = _errors(ref.keys, ref.values, k, v, queries[i])
                per_layer.append(errs)
                rows.append(_model_row(policy, ids.shape[1], i, head_dim, acc, applied, errs))
            rows.append(_model_row(policy, ids.shape[1], -1, head_dim, acc, applied,
                                   _aggregate(per_layer)))
    return rows


def _model_row(policy, n, layer, head_dim, acc, applied, errs) -> dict[str, Any]:
    params = {k: applied[k] for k in ("key_bits", "value_bits", "key_axis", "value_axis",
                                      "key_group", "value_group", "residual_length")
              if k in applied}
    return {"mode": "model", "policy": policy, "context_tokens": n, "layer": layer,
            "head_dim": head_dim, "payload_ratio": acc.get("kv_ratio_payload"),
            "true_ratio": acc.get("kv_ratio_true"), "params": params, **errs}


def _aggregate(per_layer: list[dict[str, float]]) -> dict[str, float]:
    mean = lambda key: sum(e[key] for e in per_layer) / len(per_layer)  # noqa: E731
    return {"rel_mse_k": mean("rel_mse_k"), "rel_mse_v": mean("rel_mse_v"),
            "max_err_k": max(e["max_err_k"] for e in per_layer),
            "max_err_v": max(e["max_err_v"] for e in per_layer),
            "attn_rel_err": mean("attn_rel_err")}


def ordering_violations(rows: list[dict[str, Any]]) -> list[str]:
    """Where reconstruction error does not grow strictly along fp16 < int8 < int4 < int2."""
    out = []
    index = {(r["policy"], r["context_tokens"], r["layer"]): r for r in rows}
    for n, layer in sorted({(r["context_tokens"], r["layer"]) for r in rows}):
        for key in ("rel_mse_k", "rel_mse_v"):
            errs = [index[(p, n, layer)][key] for p in ORDERED]
            for (a, ea), (b, eb) in zip(zip(ORDERED, errs), zip(ORDERED[1:], errs[1:])):
                if not ea < eb:
                    where = "all layers" if layer < 0 else f"layer {layer}"
                    out.append(f"{key} at {n} tokens, {where}: {a} {ea:.3g} is not below "
                               f"{b} {eb:.3g}")
    return out


def model_markdown(rows: list[dict[str, Any]], cfg, model_name: str) -> str:
    head = (f"Reconstruction against the full cache of {model_name} (group size "
            f"{cfg.group_size}, KIVI residual {cfg.residual_length}). Ratios are measured from "
            "the stored tensors against a 16-bit cache; relative MSE per layer, averaged in the "
            "'all' rows; attention error: relative L2 error of the attention output of the last "
            f"{QUERY_WINDOW} prompt queries.\n\n")
    lines = ["| policy | tokens | layer | payload | true | K rel MSE | V rel MSE | K max err "
             "| V max err | attn out rel err |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        layer = "all" if r["layer"] < 0 else r["layer"]
        lines.append(
            f"| {r['policy']} | {r['context_tokens']} | {layer} | {r['payload_ratio']:.4f} | "
            f"{r['true_ratio']:.4f} | {r['rel_mse_k']:.3g} | {r['rel_mse_v']:.3g} | "
            f"{r['max_err_k']:.3g} | {r['max_err_v']:.3g} | {r['attn_rel_err']:.3g} |")
    return head + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- storing

ROW_COLUMNS = ("mode", "policy", "context_tokens", "layer", "model_name", "head_dim",
               "group_size", "residual_length", "payload_ratio", "true_ratio", "rel_mse_k",
               "rel_mse_v", "max_err_k", "max_err_v", "attn_rel_err")


def store(conn, exp_group_id: str, rows: list[dict[str, Any]], cfg, model_name: str | None) -> None:
    """Replace this mode's rows of the experiment: a rerun shows the latest validation."""
    now = datetime.now(timezone.utc).isoformat()
    cols = ("exp_group_id",) + ROW_COLUMNS + ("params_json", "created_at")
    marks = ",".join("?" * len(cols))
    with transaction(conn):
        for mode in {r["mode"] for r in rows}:
            conn.execute("DELETE FROM quant_validation WHERE exp_group_id=? AND mode=?",
                         (exp_group_id, mode))
        for r in rows:
            full = {**r, "model_name": model_name if r["mode"] == "model" else None,
                    "group_size": cfg.group_size, "residual_length": cfg.residual_length}
            conn.execute(f"INSERT INTO quant_validation ({','.join(cols)}) VALUES ({marks})",
                         (exp_group_id, *(full.get(c) for c in ROW_COLUMNS),
                          json.dumps(r.get("params", {})), now))


def run_validation(exp, opts: Options) -> Validation:
    """Run the validation the options ask for; store it when ``exp`` (an Experiment) is given."""
    settings = exp.settings if exp is not None else None
    cfg = _quant_cfg(settings.kv.quant if settings else None, opts)
    if opts.memory_only:
        head_dim = opts.head_dim or 128
        rows = memory_rows(cfg, head_dim, opts.lengths or list(MEMORY_LENGTHS))
        result = Validation(rows, memory_markdown(rows, cfg, head_dim))
        model_name = None
    else:
        if settings is None:
            raise BadInput("quant-validate with a model needs -c CONFIG (the model to load); "
                           "use --memory-only for the table without a model")
        engine = _engine(exp, cfg, opts)
        rows = model_rows(engine, cfg, _model_lengths(engine, opts), settings.dataset.seed)
        model_name = settings.model.name
        result = Validation(rows, model_markdown(rows, cfg, model_name))
        result.violations = ordering_violations(rows)
    if exp is not None:
        _save(exp, result, cfg, model_name)
    if result.violations:
        raise QuantOrderingError("reconstruction error does not follow fp16 < int8 < int4 < "
                                 "int2:\n  " + "\n  ".join(result.violations), result)
    return result


def _engine(exp, cfg, opts: Options):
    # lazy: engines.hf imports torch; cli.py imports this module at start-up
    from kv_transition.engines.hf import HFEngine

    settings = exp.settings
    if settings.engine.kind != "hf":
        raise BadInput("quant-validate needs engine.kind 'hf': it reads the cache inside the model")
    engine = HFEngine(settings.model, settings.kv.press, paths.models_dir(exp.root), cfg)
    head_dim = kv_shape(engine.model.config)[2]
    if opts.head_dim is not None and opts.head_dim != head_dim:
        raise BadInput(f"--head-dim {opts.head_dim}: the model {settings.model.name!r} has "
                       f"head_dim {head_dim}; drop the flag or use --memory-only")
    return engine


def _model_lengths(engine, opts: Options) -> list[int]:
    lengths = opts.lengths or list(MODEL_LENGTHS)
    limit = engine.max_positions
    too_long = [n for n in lengths if limit and n >= limit]
    if too_long:
        raise BadInput(f"--lengths {too_long[0]}: the model has {limit} positions")
    return lengths


def _save(exp, result: Validation, cfg, model_name: str | None) -> None:
    conn = exp.connect()
    record_experiment(conn, exp)
    store(conn, exp.exp_id, result.rows, cfg, model_name)
    exp.run_dir.mkdir(parents=True, exist_ok=True)
    result.path = exp.run_dir / "quant_validate.md"
    text = result.markdown
    if result.violations:
        text += "\n**Ordering check failed:**\n\n" + "".join(f"- {v}\n" for v in result.violations)
    result.path.write_text(text)
