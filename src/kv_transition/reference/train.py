"""Train the reference model: AdamW, warm-up + cosine, grad clipping, bf16 autocast on GPU.

Deterministic given the seed: the weights come from ``torch.manual_seed(seed)``, batch ``s``
from (seed, s) alone (``dataset.StepBatches``), and the learning rate from the step number, so
a run stopped by ``max_minutes`` and resumed from its checkpoint ends with the same weights as
an uninterrupted one. On CPU this is bitwise; on GPU torch is asked for deterministic kernels
and warns about any that are not.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from kv_transition.errors import BadInput
from kv_transition.reference.dataset import IGNORE, LENGTH_DRAWS, DataPlan, StepBatches
from kv_transition.reference.model import (digit_ids, hardware, model_config, probe_ids,
                                           save_tokenizer, special_ids, word_tokenizer)

CHECKPOINT = "checkpoint.pt"
SUMMARY = "training.json"
LOG = "train_log.jsonl"
_SAVE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class TrainConfig:
    out: str
    size: str = "reference"
    data: DataPlan = field(default_factory=DataPlan)
    lr: float = 3e-3
    min_lr_frac: float = 0.1  # cosine decays to this fraction of lr
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    device: str = "auto"
    workers: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    save_dtype: str = "float16"  # halves the committed size; the engine upcasts on load
    lm_weight: float = 0.5  # weight of the language-modelling auxiliary (answer_loss)
    # A trained model's directory to start from instead of fresh weights: a second run that
    # continues a first one's weights under another data plan (the CPU recipe's long-context
    # run, MODEL_CARD.md). Its weights' hash is part of the identity, not its path.
    init_from: str | None = None

    def identity(self) -> dict:
        """What must match for a checkpoint to be resumed (not device, workers, logging)."""
        keep = ("size", "data", "lr", "min_lr_frac", "warmup", "weight_decay", "grad_clip",
                "lm_weight")
        same = {k: v for k, v in asdict(self).items() if k in keep}
        return {**same, "init_from": init_source(self.init_from)["sha256"]} \
            if self.init_from else same


WEIGHTS = "model.safetensors"


@functools.cache
def init_source(path: str) -> dict:
    """The starting weights of ``--init-from``: their hash and the run that made them.

    Read and hashed once per process: the identity is asked at every checkpoint.
    """
    weights = Path(path) / WEIGHTS
    if not weights.is_file():
        raise BadInput(f"--init-from {path}: no {WEIGHTS}; point at the directory a finished "
                       "training run saved")
    summary = Path(path) / SUMMARY
    made_by = json.loads(summary.read_text()) if summary.is_file() else {}
    return {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "steps_done": made_by.get("steps_done"),
            "train_seconds": made_by.get("train_seconds"),
            "config": made_by.get("config")}


def lr_at(cfg: TrainConfig, step: int, families_start: int | None = 0) -> float:
    """Warm-up, then the peak while binding stages run (``families_start`` None: not yet
    known), then a cosine from the families' start to the last step.

    The binding stages end when the model binds, which is not known in advance, and a
    plateau is left sooner at the peak rate than on a decaying one; so the decay starts
    with the families.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if families_start is None or step < families_start:
        return cfg.lr
    begin = max(cfg.warmup, families_start)
    progress = (step - begin) / max(1, cfg.data.steps - begin)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cosine)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {name!r}: CUDA is not available here; use 'cpu' or 'auto'")
    if not name.startswith(("cpu", "cuda")):
        raise BadInput(f"--device {name!r}: allowed: auto, cpu, cuda, cuda:N")
    return torch.device(name)


@contextmanager
def _deterministic(device: torch.device):
    """Deterministic kernels while training; the process's own setting is restored after."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    if device.type == "cuda":
        # cuBLAS needs a fixed workspace to be deterministic; set before the first CUDA call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # no weight decay on norms (1-D): decaying their gains only fights the normalization
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95),
                             fused=device.type == "cuda")


def _context_loss(model, flat, batch, targets, device, pad_id: int):
    """Next-token cross-entropy on every unsupervised, non-pad token (the LM auxiliary)."""
    following = batch["input_ids"][:, 1:]
    where = ((targets == IGNORE) & (following != pad_id)).flatten().nonzero().squeeze(1)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model.lm_head(flat.index_select(0, where.to(device))).float()
    return torch.nn.functional.cross_entropy(logits, following.flatten()[where].to(device))


def answer_loss(model, batch: dict[str, torch.Tensor], device: torch.device,
                value_ids: torch.Tensor | None = None, lm_weight: float = 0.0,
                pad_id: int = 0):
    """Cross-entropy over answers and counts: (loss, correct argmax tokens, correct and total
    value tokens, correct and total first digit groups).

    Value tokens are the digits of the answers: the part retrieval must get right, where the
    format's scaffolding (``def answer(): return``) is learned long before retrieval is. A
    value's first digit group (one not preceded by another) is the part only retrieval gives;
    the later groups are copying once the first is right.

    With ``lm_weight`` > 0 every other non-pad token is also predicted (plain language
    modelling on the haystack and questions), weighted by it: the answer-only loss gives the
    early layers no reason to form the previous-token heads retrieval is built from (the CPU
    probes in MODEL_CARD.md sat at chance without it). Otherwise the LM head runs only where a
    label exists, which saves most of its time and memory.
    """
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    index = (targets != IGNORE).flatten().nonzero().squeeze(1)
    gold = targets.flatten()[index].to(device, non_blocking=True)
    ids = batch["input_ids"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
        flat = hidden.reshape(-1, hidden.shape[-1])
        logits = model.lm_head(flat.index_select(0, index.to(device))).float()
    loss = torch.nn.functional.cross_entropy(logits, gold)
    if lm_weight > 0 and int(batch.get("lm", 1)):  # binding batches carry no LM loss
        loss = loss + lm_weight * _context_loss(model, flat, batch, targets, device, pad_id)
    hit = logits.argmax(-1) == gold
    if value_ids is None:
        none = torch.zeros_like(hit)
        return loss, hit.sum(), none.sum(), none.sum(), none.sum(), none.sum()
    value_ids = value_ids.to(device)
    is_value = torch.isin(gold, value_ids)
    before = batch["input_ids"][:, :-1].flatten()[index].to(device)
    is_first = is_value & ~torch.isin(before, value_ids)
    return (loss, hit.sum(), (hit & is_value).sum(), is_value.sum(), (hit & is_first).sum(),
            is_first.sum())


def _new_state(cfg: TrainConfig, device: torch.device):
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.data.seed)
    model = LlamaForCausalLM(model_config(cfg.size, word_tokenizer()))
    if cfg.init_from:
        _load_weights(model, Path(cfg.init_from), cfg.size)
    model = model.to(device)
    return model, _optimizer(model, cfg, device), {"step": 0, "seconds": 0.0}


def _load_weights(model, path: Path, size: str) -> None:
    from safetensors.torch import load_file

    weights = {k: v.float() for k, v in load_file(path / WEIGHTS).items()}
    if model.config.tie_word_embeddings and "model.embed_tokens.weight" in weights:
        weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])  # not saved
    shapes = lambda state: {k: tuple(v.shape) for k, v in state.items()}  # noqa: E731
    if shapes(weights) != shapes(model.state_dict()):
        raise BadInput(f"--init-from {path}: its weights do not fit the {size!r} shape; "
                       "train with the --size that made them")
    model.load_state_dict(weights)


def _load_checkpoint(path: Path, cfg: TrainConfig, device: torch.device):
    saved = torch.load(path, map_location="cpu", weights_only=False)
    same = lambda identity: json.loads(json.dumps(identity))  # noqa: E731  tuples read as lists
    if same(saved["identity"]) != same(cfg.identity()):
        raise BadInput(f"{path}: this checkpoint was made with other training settings "
                       f"({saved['identity']}); rerun with the same options, or without "
                       "--resume into an empty --out")
    model, opt, _ = _new_state(cfg, device)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    return model, opt, saved["progress"]


def _save_checkpoint(out: Path, cfg: TrainConfig, model, opt, progress: dict) -> None:
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save({"identity": cfg.identity(), "model": model.state_dict(),
                "optimizer": opt.state_dict(), "progress": progress}, tmp)
    tmp.replace(out / CHECKPOINT)  # atomic: a kill mid-save keeps the previous checkpoint


def _loader(cfg: TrainConfig, progress: dict, device: torch.device):
    """(batches, loader): the loop tells ``batches`` when the length gate opens.

    Loader workers would build batches ahead with a stale gate, so they are allowed only
    where the gate cannot move any more (it has opened, or is switched off).
    """
    batches = StepBatches(cfg.data, progress.get("gate_step"), progress.get("stage_starts"))
    gated = (cfg.data.gate_acc > 0 and batches.gate_step is None) or not batches.stages_done
    workers = 0 if gated else cfg.workers
    sampler = range(progress["step"], cfg.data.steps)  # in order: step s always gets batch s
    extra = {"prefetch_factor": 4, "persistent_workers": False} if workers else {}
    return batches, torch.utils.data.DataLoader(batches, batch_size=None, sampler=sampler,
                                                num_workers=workers,
                                                pin_memory=device.type == "cuda", **extra)


def _finish(out: Path, cfg: TrainConfig, model, progress: dict, device: torch.device) -> dict:
    import tokenizers
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar is noise in a log
    model.to(dtype=getattr(torch, cfg.save_dtype)).save_pretrained(out)
    save_tokenizer(out)
    summary = {"config": asdict(cfg), "steps_done": progress["step"],
               "train_seconds": round(progress["seconds"], 1), "hardware": hardware(device),
               "parameters": sum(p.numel() for p in model.parameters()),
               "last_log": progress.get("last_log"), "torch": torch.__version__,
               "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
               "tokenizer_probe": probe_ids(word_tokenizer())}
    if cfg.init_from:
        summary["init_from"] = init_source(cfg.init_from)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    (out / CHECKPOINT).unlink(missing_ok=True)  # never leave optimizer state beside the weights
    return summary


def _check(cfg: TrainConfig) -> None:
    plan = cfg.data
    if plan.steps < 1 or plan.tokens_per_step < 1:
        raise BadInput("--steps and --tokens-per-step must be at least 1")
    if not 96 <= plan.min_len <= plan.max_len:
        raise BadInput(f"--min-len {plan.min_len} / --max-len {plan.max_len}: need "
                       "96 <= min-len <= max-len (four needles alone take ~80 tokens)")
    if not (0 <= plan.hold_frac <= 1 and 0 <= plan.ramp_frac <= 1 and 0 <= plan.gate_acc <= 1):
        raise BadInput(f"--hold {plan.hold_frac}, --ramp {plan.ramp_frac}, --gate-acc "
                       f"{plan.gate_acc}: each must lie in [0, 1]")
    for family, (low, high) in plan.family_lengths.items():
        if family not in plan.family_weights or not plan.min_len <= low <= high <= plan.max_len:
            raise BadInput(f"--family-lengths {family}:{low}-{high}: need a trained family "
                           f"({', '.join(plan.family_weights)}) and min-len {plan.min_len} <= "
                           f"low <= high <= max-len {plan.max_len}")
    if plan.family_length_draw not in LENGTH_DRAWS:
        raise BadInput(f"--family-length-draw {plan.family_length_draw!r}: allowed: "
                       f"{', '.join(LENGTH_DRAWS)}")
    if cfg.save_dtype not in _SAVE_DTYPES:
        raise BadInput(f"--save-dtype {cfg.save_dtype!r}: allowed: {', '.join(_SAVE_DTYPES)}")
    if cfg.init_from:
        init_source(cfg.init_from)  # BadInput when there are no weights to start from


def train(cfg: TrainConfig, resume: bool = False, max_minutes: float | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Train (or resume) into ``cfg.out``; returns the summary, ``done`` False if time ran out."""
    _check(cfg)
    out, device = Path(cfg.out), _device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    with _deterministic(device):
        return _train(cfg, out, device, resume, max_minutes, log)


def _train(cfg, out, device, resume, max_minutes, log) -> dict:
    ckpt = out / CHECKPOINT
    if ckpt.is_file() and not resume:
        raise BadInput(f"{ckpt} exists: pass --resume to continue that run, or choose a new --out")
    model, opt, progress = _load_checkpoint(ckpt, cfg, device) if ckpt.is_file() else \
        _new_state(cfg, device)
    if progress["step"] == 0:
        (out / LOG).unlink(missing_ok=True)
    log(f"training {cfg.size} ({sum(p.numel() for p in model.parameters()):,} parameters) on "
        f"{hardware(device)} from step {progress['step']} of {cfg.data.steps}")
    finished = _loop(cfg, model, opt, progress, device, out, max_minutes, log)
    if not finished:
        _save_checkpoint(out, cfg, model, opt, progress)
        log(f"stopped at step {progress['step']} of {cfg.data.steps} (time limit); "
            "rerun the same command with --resume to continue")
        return {"done": False, "steps_done": progress["step"]}
    return {"done": True, **_finish(out, cfg, model, progress, device)}


def _loop(cfg, model, opt, progress, device, out, max_minutes, log) -> bool:
    """Run steps until the end (True) or until ``max_minutes`` (False)."""
    model.train()
    start = time.monotonic()
    values = _value_ids()
    pad = special_ids(word_tokenizer())["pad"]
    window = {"steps": 0, "loss": 0.0, "correct": 0, "count": 0, "value_correct": 0,
              "value_count": 0, "first_correct": 0, "first_count": 0, "t": start}  # loss, correct:
    # tensors on the device until a log line reads them, so steps do not wait for the GPU
    spent = progress["seconds"]
    batches, loader = _loader(cfg, progress, device)
    for batch in loader:
        step = progress["step"]
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step, batches.families_start)
        loss, correct, value_correct, value_count, first_correct, first_count = answer_loss(
            model, batch, device, values, cfg.lm_weight, pad)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        progress["step"] = step + 1
        progress["seconds"] = spent + time.monotonic() - start
        window["steps"] += 1
        window["loss"] += loss.detach()
        window["correct"] += correct
        window["count"] += int((batch["labels"] != IGNORE).sum())
        window["value_correct"] += value_correct
        window["value_count"] += value_count
        window["first_correct"] += first_correct
        window["first_count"] += first_count
        if progress["step"] % cfg.log_every == 0 or progress["step"] == cfg.data.steps:
            entry = _log_window(cfg, progress, window, int(batch["context_tokens"]), out, log,
                                batches)
            if batches.stages_done:
                _maybe_open_gate(cfg, batches, progress, entry, log)
            else:
                _maybe_end_stage(cfg, batches, progress, entry, log)
        if progress["step"] % cfg.checkpoint_every == 0 and progress["step"] < cfg.data.steps:
            _save_checkpoint(out, cfg, model, opt, progress)
        if max_minutes is not None and time.monotonic() - start > 60 * max_minutes \
                and progress["step"] < cfg.data.steps:
            return False
    return True


def _log_window(cfg, progress, window, length, out, log, batches) -> dict:
    steps, now = window["steps"], time.monotonic()
    entry = {"step": progress["step"], "loss": round(float(window["loss"]) / steps, 4),
             "answer_token_acc": round(float(window["correct"]) / max(1, window["count"]), 4),
             "value_token_acc": round(float(window["value_correct"]) /
                                      max(1, int(window["value_count"])), 4),
             "first_group_acc": round(float(window["first_correct"]) /
                                      max(1, int(window["first_count"])), 4),
             "stage": _stage_name(cfg, batches, progress["step"] - 1),
             "lr": lr_at(cfg, progress["step"] - 1, batches.families_start),
             "context_tokens": length,
             "s_per_step": round((now - window["t"]) / steps, 3),
             "seconds": round(progress["seconds"], 1)}
    progress["last_log"] = entry
    with open(out / LOG, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
    log(" ".join(f"{k}={v}" for k, v in entry.items()))
    window.update(steps=0, loss=0.0, correct=0, count=0, value_correct=0, value_count=0,
                  first_correct=0, first_count=0, t=now)
    return entry


def _stage_name(cfg, batches, step: int) -> str:
    """The stage of ``step``: a binding wording, or ``families``."""
    stage = cfg.data.stage_of(step, batches.stage_starts)
    return cfg.data.binding[stage] if stage < len(cfg.data.binding) else "families"


def _maybe_end_stage(cfg, batches, progress, entry, log) -> None:
    """Move to the next binding stage (or to the families) once this one has bound."""
    plan, starts = cfg.data, batches.stage_starts
    began = starts[-1] if starts else 0
    gate, max_steps = plan.stage_limits(len(starts))
    bound = entry["first_group_acc"] >= gate
    if bound or progress["step"] - began >= max_steps:
        starts.append(progress["step"])
        progress["stage_starts"] = list(starts)
        why = (f"first digit groups {entry['first_group_acc']:.3f} >= {gate}" if bound else
               f"{max_steps} steps passed, first digit groups "
               f"{entry['first_group_acc']:.3f} < {gate}")
        log(f"binding stage {plan.binding[len(starts) - 1]} ended at step {progress['step']}: "
            f"{why}")


def _maybe_open_gate(cfg, batches, progress, entry, log) -> None:
    """Start growing the length once retrieval works at short lengths (the data's gate)."""
    if batches.gate_step is not None or cfg.data.gate_acc <= 0:
        return
    if entry["value_token_acc"] >= cfg.data.gate_acc:
        batches.gate_step = progress["gate_step"] = progress["step"]
        log(f"length gate opened at step {progress['step']}: answer digits "
            f"{entry['value_token_acc']:.3f} >= {cfg.data.gate_acc}")


def _value_ids() -> torch.Tensor:
    return torch.tensor(digit_ids(word_tokenizer()))
