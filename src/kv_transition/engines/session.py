"""One model session: every tool that runs the in-process model goes through it.

A session loads a transformers model and its tokenizer once and offers the operations on them:
``prefill`` (a prompt through the model under a policy's press and cache, which compress each
layer as it finishes), ``feed`` (more tokens after compression, uncompressed: the question, a
continuation to score), ``step`` and ``decode`` (greedy or seeded sampling), and what a
measurement needs (a synchronising clock, peak memory, KV accounting from the real tensors).
``HFEngine`` (the engine protocol), the shared prefill, the perplexity canary, the novelty
probes, quant-validate and ``serve`` all use these, so each exists once: a multi-token forward
after compression in particular must build the right masks for caches whose layers hold
different numbers of tokens (Gemma 3, PyramidKV), and a copy of it elsewhere would drift.
"""

from __future__ import annotations

import copy
import resource
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from kv_transition.engines.builtin import is_builtin, resolve_builtin
from kv_transition.engines.shapes import build_random_model
from kv_transition.errors import BadInput
from kv_transition.kv.bounded import applying, extend_masks, full_layer_tokens
from kv_transition.kv.quant.accounting import cache_accounting, kv_shape
from kv_transition.kv.quant.cache import attention_modules, compressing
from kv_transition.kv.registry import make_cache, make_press
from kv_transition.policy.spec import policy_spec
from kv_transition.settings import ModelConfig, PressConfig, QuantConfig


@dataclass
class PrefillState:
    """A cache after prompt processing, with the logits that choose the first token."""

    cache: Any
    next_logits: torch.Tensor
    n_positions: int  # positions consumed so far (not the compressed cache length)
    kv_bytes: int = 0
    kv_bytes_uncompressed: int = 0
    seconds: float = 0.0
    seconds_to_first: float = 0.0
    applied: dict[str, Any] = field(default_factory=dict)
    accounting: dict[str, Any] = field(default_factory=dict)  # ratios vs a 16-bit cache
    prompt_logits: torch.Tensor | None = None  # every prompt position's, when asked for
    reused: bool = False  # a copy of a context prefilled for an earlier question
    press: Any = None  # a decoding press (DecodingPress, ...): it stays on while decoding


def layer_sizes(cache: Any) -> list[tuple[int, int]]:
    """(tokens, bytes) each layer of ``cache`` holds, from the real tensors; (0, 0) if empty."""
    sizes = []
    for layer in getattr(cache, "layers", []):
        if hasattr(layer, "stored_bytes"):  # quantized: codes + scales + zero-points + residual
            sizes.append((int(layer.get_seq_length()), int(layer.stored_bytes())))
            continue
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or keys.numel() == 0:
            sizes.append((0, 0))
            continue
        sizes.append((int(keys.shape[-2]), int(keys.nbytes + values.nbytes)))
    return sizes


def cache_bytes(cache: Any) -> tuple[int, int]:
    """(bytes held, tokens held in the longest layer), summed from the real tensors."""
    sizes = layer_sizes(cache)
    return sum(b for _, b in sizes), max((t for t, _ in sizes), default=0)


def _masked_per_layer(model: Any, n_layers: int) -> list[int]:
    """Key entries (head x token) a masking press (AdaKV, CriticalAdaKV) hides from attention
    without dropping them: kvpress's attention patch reads ``masked_key_indices``."""
    counts = []
    for module in attention_modules(model)[:n_layers]:
        masked = getattr(module, "masked_key_indices", None)
        counts.append(0 if masked is None else int(len(masked[0])))
    return counts + [0] * (n_layers - len(counts))


def hides_keys(model: Any) -> bool:
    """Has a masking press (AdaKV, CriticalAdaKV) hidden keys from attention?"""
    return any(getattr(m, "masked_key_indices", None) is not None
               for m in attention_modules(model))


def clear_masks(model: Any) -> None:
    """Forget a previous request's head-wise masks (kvpress clears them only in the attention
    implementations it patches; the eager one H2O needs is not among them)."""
    for module in attention_modules(model):
        if getattr(module, "masked_key_indices", None) is not None:
            module.masked_key_indices = None


def layer_record(cache: Any, n_positions: int, model: Any = None) -> dict[str, Any]:
    """Per layer: tokens and bytes held, and which layers hold fewer tokens than were fed.

    kvpress compresses only some layers of some architectures (Gemma 3's sliding-window layers
    are skipped), so a policy's reach is measured here, not assumed. Masking presses (AdaKV)
    keep every token: their layers do not count as compressed, and their bytes say so; with
    ``model``, the entries they hide are counted, so ``kv_attended_fraction`` says what
    attention actually sees (head x token entries, over every layer).
    """
    sizes = layer_sizes(cache)
    tokens, nbytes = [t for t, _ in sizes], [b for _, b in sizes]
    # what each layer of this cache holds uncompressed: a window-bounded layer its window
    full = [min(layer.sliding_window - 1, n_positions) if getattr(layer, "is_sliding", False)
            else n_positions for layer in getattr(cache, "layers", [])]
    record = {"kv_layer_tokens": tokens, "kv_layer_bytes": nbytes,
              "layers_compressed": [i for i, (t, f) in enumerate(zip(tokens, full)) if t < f]}
    if model is not None:
        heads = getattr(model.config, "num_key_value_heads", None) or \
            model.config.num_attention_heads
        masked = _masked_per_layer(model, len(tokens))
        entries = heads * sum(tokens)
        record["kv_layer_masked"] = masked
        record["kv_attended_fraction"] = (entries - sum(masked)) / (heads * sum(full)) \
            if tokens else None
    return record


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"model.device {name!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    return torch.device(name)


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def tokenizer_source(model_cfg: ModelConfig) -> str:
    """Where the tokenizer (and, unless systems mode, the weights) come from."""
    if model_cfg.init == "random":
        return model_cfg.tokenizer or "builtin:tiny-random"
    return model_cfg.name


def resolve_model_path(name: str, models_root: Path) -> str:
    if is_builtin(name):
        return str(resolve_builtin(name, models_root))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BadInput(f"model.name {name!r}: directory has no config.json; point it at a "
                           "transformers checkpoint saved with save_pretrained")
        return str(path)
    return name  # maybe a hub id in the local cache; checked when loading (offline)


class ModelSession:
    """A loaded model and tokenizer with the operations every tool runs on them."""

    def __init__(self, model_cfg: ModelConfig, press_cfg: PressConfig, models_root: Path,
                 quant_cfg: QuantConfig | None = None):
        self.model_cfg = model_cfg
        self.press_options = press_cfg.model_dump()
        self.quant_cfg = quant_cfg or QuantConfig()
        self.device = _resolve_device(model_cfg.device)
        if model_cfg.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(model_cfg.threads)  # process-wide: one engine per process
        self.dtype = _resolve_dtype(model_cfg.dtype, self.device)
        self.path = resolve_model_path(tokenizer_source(model_cfg), models_root)
        self.attn = model_cfg.attn_implementation or "sdpa"
        self.model, self.tokenizer = self._load(self.attn)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.use_chat = self._wants_chat_template()
        self.eos_ids = self._eos_ids()
        self._context = None  # (key, ids, settings, states) of the context held for reuse

    # -- loading -------------------------------------------------------------------------
    def _load(self, attn: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the runner draws its own progress bar

        local_only = not Path(self.path).exists()
        try:
            tok = AutoTokenizer.from_pretrained(self.path, local_files_only=local_only)
            if self.model_cfg.init == "random":  # systems mode: real shape, random weights
                model = build_random_model(self.model_cfg.shape, self.dtype, self.device, attn)
                if len(tok) > model.config.vocab_size:
                    raise BadInput(f"model.tokenizer has {len(tok)} tokens, more than shape "
                                   f"{self.model_cfg.shape!r}'s vocabulary of {model.config.vocab_size}")
                return model, tok
            model = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=self.dtype, attn_implementation=attn, local_files_only=local_only)
        except (OSError, ValueError) as exc:
            raise BadInput(
                f"model.name {self.model_cfg.name!r}: cannot load it offline ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}). Give a local checkpoint directory or "
                "'builtin:tiny-random'.") from None
        model.to(self.device).eval()
        return model, tok

    def use_attention_for(self, policy: str) -> None:
        """H2O needs the attention weights, which only the eager implementation returns."""
        wanted = "eager" if policy_spec(policy).needs_attention_weights else self.attn
        if self.model.config._attn_implementation != wanted:
            self.model.set_attn_implementation(wanted)

    def _wants_chat_template(self) -> bool:
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if self.model_cfg.chat_template == "on" and not has:
            raise BadInput(f"model.chat_template 'on': the tokenizer of {self.model_cfg.name!r} has none")
        return has if self.model_cfg.chat_template == "auto" else self.model_cfg.chat_template == "on"

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    # -- prefill, feed, step, decode -------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, policy: str, budget: float, all_logits: bool = False,
                on_press: Callable[[Any], None] | None = None) -> PrefillState:
        """Run ``ids`` through the model under the policy's press; the cache comes back compressed.

        ``all_logits`` keeps every position's logits (``state.prompt_logits``: a probe scores
        the prompt); ``on_press`` sees the press before it is applied (a probe records its
        scores)."""
        press, applied = make_press(policy, budget, ids.shape[1], self.press_options)
        if on_press is not None:
            on_press(press)
        # quantization policies bring their own cache; it quantizes what the press kept
        cache, quant_applied = make_cache(policy, budget, self.quant_cfg, self.model.config)
        applied = {**applied, **quant_applied}
        clear_masks(self.model)
        start = self.now()
        with compressing(self.model, press, cache):
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True,
                             logits_to_keep=0 if all_logits else 1)
        seconds = self.now() - start
        state = PrefillState(cache, out.logits[0, -1], ids.shape[1], seconds=seconds, applied=applied,
                             prompt_logits=out.logits[0] if all_logits else None,
                             press=press if policy_spec(policy).decoding else None)
        state.kv_bytes = cache_bytes(cache)[0]
        state.kv_bytes_uncompressed = self.full_bytes(state)
        return state

    def extend(self, state: PrefillState, ids: torch.Tensor) -> None:
        """Feed more prompt tokens (the question) after compression, uncompressed."""
        self.feed(state, ids)

    @torch.inference_mode()
    def feed(self, state: PrefillState, ids: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Feed ``ids`` [1, n] after the cache's positions, uncompressed; returns the logits of
        the last fed position [1, vocab], or of every one [n, vocab] with ``all_logits``."""
        n = ids.shape[1]
        if n == 0:
            return state.next_logits[None]
        positions = torch.arange(state.n_positions, state.n_positions + n,
                                 device=self.device).unsqueeze(0)
        masks = None
        if hides_keys(self.model):
            # kvpress hides a masking press's keys (AdaKV) behind one fake key per head that
            # must score ~0 against every query of the forward; many question tokens in a small
            # head dimension can leave no such key (kvpress raises). One token at a time always
            # has one, and attention gives the same result.
            rows = [self.step(state, token) for token in ids[0].tolist()]
            return torch.stack(rows) if all_logits else rows[-1][None]
        if uneven_layers(state.cache):
            # Gemma 3's compressed full-attention layers hold fewer tokens than its sliding
            # ones: masks built per attention type (kv/bounded.py). Per-layer budgets
            # (PyramidKV) leave full-attention layers of different lengths, which no one mask
            # fits: one token at a time needs no mask and gives the same result.
            masks = extend_masks(self.model, state.cache, n, positions)
            if masks is None:
                rows = [self.step(state, token) for token in ids[0].tolist()]
                return torch.stack(rows) if all_logits else rows[-1][None]
        out = self.model(input_ids=ids, past_key_values=state.cache, position_ids=positions,
                         attention_mask=masks, use_cache=True, logits_to_keep=0 if all_logits else 1)
        state.next_logits = out.logits[0, -1]
        state.n_positions += n
        return out.logits[0]

    @torch.inference_mode()
    def decode(self, state: PrefillState, max_tokens: int, temperature: float, seed: int,
               on_token: Callable[[int], None] | None = None):
        """Generate up to ``max_tokens``; returns (token ids, finish reason, seconds per token).

        ``on_token`` sees each token as it is chosen (the server streams with it)."""
        with self._decoding(state):
            return self._decode(state, max_tokens, temperature, seed, on_token)

    def _decoding(self, state: PrefillState):
        """A decoding press compresses the cache as tokens are generated: its hooks stay on."""
        return applying(state.press, self.model) if state.press is not None else nullcontext()

    def _decode(self, state: PrefillState, max_tokens: int, temperature: float, seed: int,
                on_token: Callable[[int], None] | None):
        gen = torch.Generator(device=self.device).manual_seed(seed) if temperature > 0 else None
        tokens: list[int] = []
        step_times: list[float] = []
        logits = state.next_logits
        for _ in range(max_tokens):
            start = self.now()
            token = choose_token(logits, temperature, gen)
            tokens.append(token)
            if on_token is not None:
                on_token(token)
            if token in self.eos_ids:
                step_times.append(self.now() - start)
                return tokens, "stop", step_times
            if len(tokens) < max_tokens:
                logits = self.step(state, token)
            step_times.append(self.now() - start)
        return tokens, "length", step_times

    @torch.inference_mode()
    def step(self, state: PrefillState, token: int) -> torch.Tensor:
        """Feed one token; returns the logits that choose the next."""
        ids = torch.tensor([[token]], device=self.device)
        pos = torch.tensor([[state.n_positions]], device=self.device)
        out = self.model(input_ids=ids, past_key_values=state.cache, position_ids=pos, use_cache=True)
        state.n_positions += 1
        state.next_logits = out.logits[0, -1]
        return state.next_logits

    # -- one context, several questions ---------------------------------------------------
    def keep_context(self, context_key: str | None, ids: torch.Tensor, settings: tuple,
                     states: dict) -> None:
        """Hold a copy of ``states`` (setting -> PrefillState of the context ``ids``) for the
        next question on the same context; one context is held at a time. Nothing is held
        without a key, or for a policy whose state a copy of the cache would not carry."""
        if context_key is not None and all(holds_copies(policy) for policy, _ in settings):
            self._context = (context_key, ids, settings, copy.deepcopy(states))

    def recall_context(self, context_key: str | None, ids: torch.Tensor,
                       settings: tuple) -> dict | None:
        """A fresh copy of the held states if they are this context's under these settings."""
        held = self._context
        if context_key is None or held is None or held[0] != context_key or \
                held[2] != settings or not torch.equal(held[1], ids):
            return None
        clear_masks(self.model)  # held states come from presses that drop, never mask
        states = copy.deepcopy(held[3])
        for state in states.values():
            state.reused = True
        return states

    def settle(self, state: PrefillState) -> None:
        """Measure what decoding will attend to: the compressed context plus whatever was fed
        after it, against the uncompressed cache of as many positions."""
        state.kv_bytes = cache_bytes(state.cache)[0]
        state.kv_bytes_uncompressed = self.full_bytes(state)
        state.accounting = self.accounting_notes(state)

    def full_bytes(self, state: PrefillState) -> int:
        """What the uncompressed cache would hold for the prefilled positions."""
        _, heads, head_dim = kv_shape(self.model.config)
        elem = torch.finfo(self.dtype).bits // 8
        # before decoding: context (+ question). A sliding-window layer holds at most its
        # window, compressed or not: counting it at full length would overstate both the
        # full cache and any press's saving
        tokens = sum(full_layer_tokens(self.model.config, state.n_positions))
        return 2 * heads * head_dim * elem * tokens

    def accounting_notes(self, state: PrefillState) -> dict[str, Any]:
        """Payload and true ratios against a 16-bit cache, with the nominal budget applied."""
        notes = cache_accounting(state.cache, state.n_positions, self.model.config, self.dtype)
        notes.update(layer_record(state.cache, state.n_positions, self.model))
        for key in ("kv_budget_nominal", "fits_budget"):
            if key in state.applied:
                notes[key] = state.applied[key]
        if hasattr(state.cache, "width_counts"):  # adaptive: tokens x layers per width
            notes["adaptive_widths"] = {str(b): n for b, n in state.cache.width_counts().items()}
            notes["fits_budget"] = state.cache.fits_budget()
        return notes

    # -- measurement -----------------------------------------------------------------------
    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> tuple[float, str]:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20, "request"
        # Linux reports ru_maxrss in KiB; no per-request peak exists on CPU
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process"

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def holds_copies(policy: str) -> bool:
    """Can a copy of this policy's compressed context answer another question? Not for
    presses defined in the config unless a lone scorer: wrappers such as AdaKV mask keys on
    the attention modules, and decoding presses keep buffers, outside the cache a copy would
    carry."""
    spec = policy_spec(policy)
    return spec.definition is None or spec.shared_prefill


def choose_token(logits: torch.Tensor, temperature: float, gen) -> int:
    """Greedy at temperature 0, else a sample from the tempered softmax (seeded by ``gen``)."""
    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen).item())


@contextmanager
def attention_mode(model, policy: str) -> Iterator[None]:
    """The attention implementation ``policy`` needs, for the block only (then restored)."""
    before = model.config._attn_implementation
    wanted = "eager" if policy_spec(policy).needs_attention_weights else before
    if wanted != before:
        model.set_attn_implementation(wanted)
    try:
        yield
    finally:
        if wanted != before:
            model.set_attn_implementation(before)


def uneven_layers(cache: Any) -> bool:
    """Would a multi-token forward mis-mask this cache? The model numbers the new tokens from
    ``cache.get_seq_length()`` (layer 0) and builds one causal mask per attention type from
    that; a full-attention layer holding another number of tokens would then let a new token
    see the ones after it. Sliding-window layers are masked by their own window and count
    every position seen, so only the full-attention layers are compared, with layer 0."""
    # get_seq_length, not keys: a quantized layer's keys are only its full-precision residual
    lengths = {layer.get_seq_length() for layer in getattr(cache, "layers", [])
               if not getattr(layer, "is_sliding", False) and (
                   isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.numel()
                   or getattr(layer, "sealed", False))}
    return len(lengths) > 1 or bool(lengths) and lengths != {cache.get_seq_length()}
