"""The generator's output must tokenize into vocabulary items only (the reference model's
word-level tokenizer is built from vocabulary())."""

from tokenizers import pre_tokenizers as pt

from kv_transition.data import prompt, vocab
from kv_transition.data.synthetic import generate_examples
from kv_transition.settings import SYNTHETIC_TASKS

# The split the word-level tokenizer uses: whitespace, every punctuation char, every digit.
PRE = pt.Sequence([pt.WhitespaceSplit(), pt.Punctuation(), pt.Digits(individual_digits=True)])


def _pieces(text: str) -> list[str]:
    return [piece for piece, _ in PRE.pre_tokenize_str(text)]


def test_every_generated_token_is_in_the_vocabulary():
    words = set(vocab.vocabulary())
    seen = set()
    for seed in range(3):
        for task in (*SYNTHETIC_TASKS, "mix"):
            for ex in generate_examples(task, 400, 10, seed, lambda t: len(t.split())):
                for text in (ex.context, ex.question, ex.answer_prefix, *ex.answers):
                    seen.update(_pieces(text))
    assert seen - words == set()
    assert len(seen) > 250  # the filler really varies


def test_prompt_template_words_are_in_the_vocabulary():
    text = prompt.full_prompt("", "", "")
    assert set(_pieces(text)) - set(vocab.vocabulary()) == set()


def test_vocabulary_is_ordered_unique_and_splits_to_itself():
    v = vocab.vocabulary()
    assert v == vocab.vocabulary() and len(v) == len(set(v))
    assert [str(d) for d in range(10)] == [w for w in v if w.isdigit()]
    assert all(_pieces(w) == [w] for w in v)


def test_needle_words_stay_out_of_the_filler():
    filler = vocab.filler_words()
    assert filler.isdisjoint(vocab.KEYS)
    assert filler.isdisjoint(vocab.VARIABLE_NAMES)
    assert filler.isdisjoint({"special", "magic", "VAR"})
    assert len(set(vocab.KEYS)) == len(vocab.KEYS) >= 50


def test_no_variable_name_contains_another():
    # string_match_all is a case-insensitive substring test
    names = [n.lower() for n in vocab.VARIABLE_NAMES]
    assert not [(a, b) for a in names for b in names if a != b and a in b]


def test_digit_groups_are_opt_in_and_round_trip():
    from kv_transition.data.word_tokenizer import build_word_tokenizer

    text = "the number for koala is: 4985193. [1, 23, 0071234]"
    words = vocab.vocabulary()
    single, grouped = build_word_tokenizer(words), build_word_tokenizer(words, 3)
    assert single.get_vocab_size() + 1100 == grouped.get_vocab_size()  # 2- and 3-digit groups
    assert [t for t in single.encode(text).tokens if t.isdigit()] == list("4985193") + \
        list("1") + list("23") + list("0071234")
    assert [t for t in grouped.encode(text).tokens if t.isdigit()] == \
        ["498", "519", "3", "1", "23", "007", "123", "4"]
    for tok in (single, grouped):
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
