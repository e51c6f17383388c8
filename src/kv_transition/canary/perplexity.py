"""Perplexity under a compressed KV cache: the cheap token-level metric SDS holds to account.

For each held-out window, the prefix is prefilled through ``HFEngine.prefill`` under the
policy at the budget (so the cache is compressed exactly as for an answer), and the
continuation is teacher-forced through the model on top of that cache, uncompressed, as the
question is. The loss of every continuation token is summed in float64 and stored per run and
window, with the measured KV bytes of the compressed prefix: perplexity shares the memory axis
with the functional runs. Corpus perplexity is ``exp(sum nll / sum tokens)``.
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from kv_transition.canary.source import heldout_documents, text_hash
from kv_transition.db.connect import transaction
from kv_transition.engines.factory import make_engine
from kv_transition.engines.tokenizer import load_counter
from kv_transition.errors import BadInput
from kv_transition.run.grid import plan_grid
from kv_transition.settings import PerplexityConfig, Settings


@dataclass
class Window:
    """One held-out window: ``prefix`` is compressed, ``continuation`` is scored."""

    text_id: str
    text_hash: str
    prefix: list[int]
    continuation: list[int]


def make_windows(docs: list[tuple[str, str]], tokenizer, cfg: PerplexityConfig) -> list[Window]:
    """Consecutive, non-overlapping windows of prefix + continuation tokens, in document order.

    A BOS token (when the tokenizer has one) starts every prefix, as the engine's prompts do.
    """
    size = cfg.prefix_tokens + cfg.continuation_tokens
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    out: list[Window] = []
    for doc_id, text in docs:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        for k, start in enumerate(range(0, len(ids) - size + 1, size)):
            piece = ids[start:start + size]
            out.append(Window(f"{doc_id}#{k}", text_hash(f"{doc_id}#{k}:{piece}"),
                              bos + piece[:cfg.prefix_tokens], piece[cfg.prefix_tokens:]))
            if len(out) == cfg.n_texts:
                return out
    raise BadInput(
        f"canary.perplexity: the held-out text gives only {len(out)} window(s) of "
        f"{cfg.prefix_tokens} + {cfg.continuation_tokens} tokens, fewer than n_texts = "
        f"{cfg.n_texts}; lower n_texts or the token counts, or give a longer text")


@torch.inference_mode()
def continuation_nll(engine, window: Window, policy: str, budget: float) -> dict[str, Any]:
    """Sum of -log p(continuation token) with the prefix in a compressed cache."""
    engine.use_attention_for(policy)
    start = time.perf_counter()
    prefix = torch.tensor([window.prefix], dtype=torch.long, device=engine.device)
    state = engine.prefill(prefix, policy, budget)
    kv_bytes, kv_full = state.kv_bytes, state.kv_bytes_uncompressed
    target = torch.tensor(window.continuation, dtype=torch.long, device=engine.device)
    first = state.next_logits.float().unsqueeze(0)  # predicts the first continuation token
    feed = torch.tensor([window.continuation[:-1]], dtype=torch.long, device=engine.device)
    # the session's feed: the same positions and masks the question gets after compression
    rest = engine.feed(state, feed, all_logits=True).float() if feed.shape[1] else first[:0]
    logits = [first, rest]
    logprobs = torch.log_softmax(torch.cat(logits), dim=-1)
    nll = -logprobs.gather(1, target.unsqueeze(1)).double().sum().item()
    return {"nll_sum": nll, "n_tokens": len(window.continuation), "kv_bytes": kv_bytes,
            "kv_bytes_full": kv_full, "seconds": time.perf_counter() - start}


def corpus_ppl(nll_sums: list[float], n_tokens: list[int]) -> float:
    return math.exp(sum(nll_sums) / sum(n_tokens)) if n_tokens and sum(n_tokens) else math.nan


# ---------------------------------------------------------------- the run-phase hook

def check_source(settings: Settings, models_root: Path) -> None:
    """Fail on a bad or too short held-out file before ``run`` writes anything.

    The offline text is sized to fit, so only a file is checked, with the model's tokenizer.
    """
    cfg = settings.canary.perplexity
    if cfg is None or cfg.path is None:
        return
    count, _ = load_counter(settings, models_root)
    size = cfg.prefix_tokens + cfg.continuation_tokens
    available = sum(count(text) // size for _, text in heldout_documents(cfg, count))
    if available < cfg.n_texts:
        raise BadInput(
            f"canary.perplexity.path {cfg.path!r} gives only {available} window(s) of "
            f"{cfg.prefix_tokens} + {cfg.continuation_tokens} tokens, fewer than n_texts = "
            f"{cfg.n_texts}; lower n_texts or the token counts, or give a longer text")


def _settings_left(conn: sqlite3.Connection, settings: Settings, ds_id: str,
                   n_texts: int) -> list[tuple[int, str, float, set[str]]]:
    """(run_id, policy, budget, windows done) for every grid setting with windows missing."""
    left = []
    for policy, budget in plan_grid(settings):
        row = conn.execute(
            "SELECT run_id FROM runs WHERE exp_group_id=? AND dataset_id=? AND kv_policy=? "
            "AND kv_budget=?", (settings.output.exp_group_id, ds_id, policy, budget)).fetchone()
        if row is None:
            continue  # the functional run is not there yet; `run` creates it first
        done = {r[0] for r in conn.execute("SELECT text_id FROM perplexity WHERE run_id=?",
                                           (row["run_id"],))}
        if len(done) < n_texts:
            left.append((row["run_id"], policy, budget, done))
    return left


def run_perplexity(conn: sqlite3.Connection, settings: Settings, ds_id: str,
                   models_root: Path) -> int:
    """Score every held-out window under every setting not yet scored; returns rows written.

    Resumable like ``run``: each window's row is committed as soon as it is measured.
    """
    cfg = settings.canary.perplexity
    if cfg is None:
        return 0
    left = _settings_left(conn, settings, ds_id, cfg.n_texts)
    if not left:
        return 0
    engine = make_engine(settings, models_root, [(p, b) for _, p, b, _ in left])
    written = 0
    try:
        windows = make_windows(heldout_documents(cfg, engine.count_tokens), engine.tokenizer, cfg)
        for run_id, policy, budget, done in left:
            for window in windows:
                if window.text_id in done:
                    continue
                _record(conn, run_id, window, continuation_nll(engine, window, policy, budget))
                written += 1
    finally:
        engine.close()
    return written


def _record(conn: sqlite3.Connection, run_id: int, window: Window, m: dict[str, Any]) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO perplexity(run_id, text_id, text_hash, prefix_tokens, n_tokens, nll_sum, "
            "kv_bytes, kv_bytes_full, seconds, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (run_id, window.text_id, window.text_hash, len(window.prefix), m["n_tokens"],
             m["nll_sum"], m["kv_bytes"], m["kv_bytes_full"], m["seconds"],
             datetime.now(timezone.utc).isoformat()))
