"""The word tokenizer the reference model reads: closed vocabulary, digits, code punctuation."""

import pytest
from transformers import AutoTokenizer

from kv_transition.data.vocab import vocabulary
from kv_transition.reference import formats
from kv_transition.reference.model import save_tokenizer, word_tokenizer

ANSWERS = [
    ' {"name": "lookup", "arguments": {"key": "koala", "value": 4985193}}',
    ' {"name": "lookup", "arguments": {"key": "koala", "value": [1023456, 7, 89]}}',
    " def answer(): return 4985193",
    " def answer(): return [1023456, 7, 89]",
    " 4985193, 1023456 and 7.",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(out)
    return AutoTokenizer.from_pretrained(out, local_files_only=True)


@pytest.mark.parametrize("text", ANSWERS)
def test_functional_answers_round_trip_without_unknown_tokens(saved, text):
    ids = saved(text, add_special_tokens=False).input_ids
    assert saved.unk_token_id not in ids
    assert saved.decode(ids, skip_special_tokens=True) == text


def test_numbers_split_into_groups_of_three_digits_from_the_left(saved):
    tokens = saved.convert_ids_to_tokens(saved(" 4985193", add_special_tokens=False).input_ids)
    assert tokens == ["\u2581", "498", "519", "3"]
    tokens = saved.convert_ids_to_tokens(saved(" 0071", add_special_tokens=False).input_ids)
    assert tokens == ["\u2581", "007", "1"]  # leading zeros stay inside their group
    groups = [str(v).zfill(w) for w in (1, 2, 3) for v in range(10 ** w)]
    assert all(saved.convert_tokens_to_ids(g) != saved.unk_token_id for g in groups)


@pytest.mark.parametrize("char", ['"', "{", "}", "(", ")", "[", "]", ":", ","])
def test_code_punctuation_is_split_into_single_tokens(saved, char):
    ids = saved(f"koala{char}lemur", add_special_tokens=False).input_ids
    tokens = saved.convert_ids_to_tokens(ids)
    assert tokens == ["koala", char, "lemur"]


def test_cues_and_code_words_are_in_the_vocabulary(saved):
    text = " ".join(formats.CUES.values()) + " def answer return name lookup arguments key value"
    assert saved.unk_token_id not in saved(text, add_special_tokens=False).input_ids
    # an unknown word really is unknown: the check above can fail
    assert saved.unk_token_id in saved("zyzzyva", add_special_tokens=False).input_ids


def test_training_encoder_matches_the_saved_tokenizer(saved):
    # the data builder encodes with the tokenizers object; the engine with the saved files
    tok = word_tokenizer()
    text = ("Read the text below.\n\nThe special magic number for koala is: 4985193.\n\n"
            + ANSWERS[0])
    assert tok.encode(text, add_special_tokens=False).ids == \
        saved(text, add_special_tokens=False).input_ids
    assert tok.encode(text).ids[0] == saved.bos_token_id == saved(text).input_ids[0]
    assert tok.get_vocab_size() == len(saved) > len(set(w.lower() for w in vocabulary()))
