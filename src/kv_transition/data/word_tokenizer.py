"""A word-level tokenizer over the synthetic generator's closed vocabulary.

Words carry a leading-space marker (Metaspace) so decoding restores spacing, and digits are
single tokens so any number composes from ten symbols. Text is lower-cased: RULER scoring is
case-insensitive, and a closed vocabulary stays small.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIALS = ("<pad>", "<s>", "</s>", "[UNK]")
SPACE = "\u2581"


def _vocab_entries(words: list[str]) -> list[str]:
    entries = list(SPECIALS) + [SPACE, "\n"] + [str(d) for d in range(10)]
    seen = set(entries)
    for word in words:
        word = word.lower()
        for entry in (word, SPACE + word):
            if entry not in seen and word.strip():
                seen.add(entry)
                entries.append(entry)
    return entries


def build_word_tokenizer(words: list[str]) -> Tokenizer:
    vocab = {entry: i for i, entry in enumerate(_vocab_entries(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never"),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return tok


def save_word_tokenizer(words: list[str], out_dir: Path, model_max_length: int) -> None:
    """Save as a ``PreTrainedTokenizerFast`` that ``AutoTokenizer`` loads offline."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_word_tokenizer(words), bos_token="<s>", eos_token="</s>",
        unk_token="[UNK]", pad_token="<pad>", model_max_length=model_max_length)
    fast.save_pretrained(out_dir)
