"""The reference model's architecture and tokenizer.

``reference`` is the first probe's shape (4 layers, hidden 256, GQA 8/4 heads, tied embeddings):
big enough to learn the tasks, small enough that one request at 4096 tokens stays under a
second on two CPU cores (``benchmarks/reference_latency.py``). ``smoke`` is for tests.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from kv_transition.data.vocab import vocabulary
from kv_transition.errors import BadInput

# Numbers are split into groups of three digits: a 7-digit value is 3 tokens that rarely recur
# in one context, so after its first group an answer is plain copying (what small models learn
# in ~100 steps), where ten single-digit symbols made every copy ambiguous (MODEL_CARD.md).
DIGIT_GROUP = 3
MAX_POSITIONS = 8192  # longest bin 4096 + question + answer, with room to probe beyond
ROPE_THETA = 10000.0

# ``initializer_range`` 0.1 instead of transformers' 0.02: with tied embeddings of norm
# 0.02 x sqrt(128) a copied token's logit can reach only ~2.6, and a value group seen a few times
# per step grows slowly; a probe copying one needle's value learned it in 100 steps at 0.1 and
# not in 200 at 0.02 (MODEL_CARD.md, recipe G).
SIZES: dict[str, dict[str, float]] = {
    "reference": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                  "num_attention_heads": 4, "num_key_value_heads": 2,
                  "initializer_range": 0.1},
    "smoke": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2},
}


def word_tokenizer():
    """The ``tokenizers`` object the data builder encodes with (same as the saved one)."""
    from kv_transition.data.word_tokenizer import build_word_tokenizer  # lazy: `tokenizers`

    return build_word_tokenizer(vocabulary(), DIGIT_GROUP)


def save_tokenizer(out_dir: Path) -> None:
    from kv_transition.data.word_tokenizer import save_word_tokenizer  # lazy: `tokenizers`

    save_word_tokenizer(vocabulary(), out_dir, MAX_POSITIONS, DIGIT_GROUP)


# Encoded at training time and again at install: a different tokenizers version that split
# differently would make the installed tokenizer disagree with what the model was trained on.
TOKENIZER_PROBE = ('Read the text below.\n\nThe special magic number for koala is: 4985193. VAR '
                   'ALPHA = VAR BRAVO.\n\nQuestion: Answer with a JSON tool call.\nAnswer: '
                   '{"name": "lookup", "arguments": {"key": "koala", "value": [1, 23]}} '
                   'def answer(): return 4985193')


def probe_ids(tok) -> list[int]:
    return tok.encode(TOKENIZER_PROBE).ids


def special_ids(tok) -> dict[str, int]:
    return {name: tok.token_to_id(token) for name, token in
            (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>"))}


def digit_ids(tok) -> list[int]:
    """Ids of the digit-group tokens: the values answers are made of."""
    from kv_transition.data.word_tokenizer import digit_strings  # lazy: `tokenizers`

    return [tok.token_to_id(d) for d in digit_strings(DIGIT_GROUP)]


def model_config(size: str, tok):
    """A ``LlamaConfig`` for ``size`` over the word tokenizer ``tok``."""
    from transformers import LlamaConfig

    if size not in SIZES:
        raise BadInput(f"--size {size!r}: unknown model size; allowed: {', '.join(SIZES)}")
    ids = special_ids(tok)
    return LlamaConfig(
        vocab_size=tok.get_vocab_size(), max_position_embeddings=MAX_POSITIONS,
        rope_theta=ROPE_THETA, tie_word_embeddings=True, bos_token_id=ids["bos"],
        eos_token_id=ids["eos"], pad_token_id=ids["pad"], **SIZES[size])


def hardware(device) -> str:
    """A one-line description of where training or evaluation ran, for the model card."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return (f"CPU ({platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads)")


def install(src: Path, dst: Path) -> None:
    """Re-save trained weights with this environment's transformers and tokenizer.

    The GPU that trains may run other library versions than the project pins; loading and
    saving here writes config and tokenizer files that the pinned versions surely read.
    Weights keep the dtype they were saved in.
    """
    from transformers import AutoModelForCausalLM

    if not (src / "config.json").is_file():
        raise BadInput(f"{src}: no config.json; point at the directory a training run saved")
    summary = src / "training.json"
    trained = json.loads(summary.read_text()).get("tokenizer_probe") if summary.is_file() else None
    if trained is not None and trained != probe_ids(word_tokenizer()):
        raise BadInput(f"{summary}: the tokenizer here splits text differently from the one the "
                       "model was trained with (tokenizer_probe differs); install with the "
                       "tokenizers version named there")
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto", local_files_only=True)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    save_tokenizer(dst)
