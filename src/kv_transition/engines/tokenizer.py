"""Token counting with the model's own tokenizer, so bins mean what the model sees.

In ``engines/`` because finding the tokenizer means resolving the model the engine will load
(a builtin, a local checkpoint, or a server's named tokenizer); ``data/`` only receives the
counting function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kv_transition.errors import BadInput
from kv_transition.settings import Settings


def load_counter(settings: Settings, models_root: Path) -> tuple[Callable[[str], int], str]:
    """Return (count_tokens, tokenizer id). The id goes into the manifest hash."""
    source = settings.model.tokenizer
    if settings.engine.kind == "hf":
        # here, not at the top: engines.hf imports torch, which the CLI must not load at start
        from kv_transition.engines.session import resolve_model_path, tokenizer_source

        source = resolve_model_path(tokenizer_source(settings.model), models_root)
    if source is None:
        # an HTTP model with no local tokenizer: count words, and say so in the manifest
        return (lambda text: len(text.split())), "whitespace-words"
    tok = load_tokenizer(source)
    return (lambda text: len(tok(text, add_special_tokens=False).input_ids)), \
        f"{source}|{tok.__class__.__name__}|{len(tok)}"


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    local = Path(source).expanduser().exists()
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=not local)
    except (OSError, ValueError) as exc:
        raise BadInput(f"model.tokenizer / model.name {source!r}: cannot load a tokenizer offline "
                       f"({exc.__class__.__name__}); give a local directory") from None
