"""A word-level tokenizer over the synthetic generator's closed vocabulary.

Words carry a leading-space marker (Metaspace) so decoding restores spacing. Numbers split into
groups of ``digit_group`` digits from the left (``4985193`` -> ``498 519 3`` at 3, as the
tokenizers of GPT-4 and Llama 3 split numbers); at 1, any number composes from ten symbols.
Text is lower-cased: RULER scoring is case-insensitive, and a closed vocabulary stays small.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SPECIALS = ("<pad>", "<s>", "</s>", "[UNK]")
SPACE = "\u2581"


def digit_strings(digit_group: int) -> list[str]:
    """Every run of 1 to ``digit_group`` digits, leading zeros included (``007`` is a group)."""
    return [str(v).zfill(width) for width in range(1, digit_group + 1)
            for v in range(10 ** width)]


def _vocab_entries(words: list[str], digit_group: int = 1) -> list[str]:
    entries = list(SPECIALS) + [SPACE, "\n"] + digit_strings(digit_group)
    seen = set(entries)
    for word in words:
        word = word.lower()
        for entry in (word, SPACE + word):
            if entry not in seen and word.strip():
                seen.add(entry)
                entries.append(entry)
    return entries


def build_word_tokenizer(words: list[str], digit_group: int = 1) -> Tokenizer:
    vocab = {entry: i for i, entry in enumerate(_vocab_entries(words, digit_group))}
    digits = pre_tokenizers.Digits(individual_digits=True) if digit_group == 1 else \
        pre_tokenizers.Split(Regex(rf"\d{{1,{digit_group}}}"), behavior="isolated")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never"),
        pre_tokenizers.Punctuation(behavior="isolated"),
        digits,
    ])
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return tok


def save_word_tokenizer(words: list[str], out_dir: Path, model_max_length: int,
                        digit_group: int = 1) -> None:
    """Save as a ``PreTrainedTokenizerFast`` that ``AutoTokenizer`` loads offline."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_word_tokenizer(words, digit_group), bos_token="<s>", eos_token="</s>",
        unk_token="[UNK]", pad_token="<pad>", model_max_length=model_max_length)
    fast.save_pretrained(out_dir)
