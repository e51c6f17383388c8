import json
import sys
import types

import pytest

from kv_transition.data.longbench import load_longbench
from kv_transition.errors import BadInput, DataError


def record(i: int, **over) -> dict:
    rec = {"input": f"Who wrote  book {i}?", "context": f"Passage {i}.\n\nIt  was   Ann.",
           "answers": ["Ann"], "length": 5, "dataset": "hotpotqa", "language": "en",
           "all_classes": None, "_id": f"id{i}"}
    rec.update(over)
    return rec


def write(path, lines) -> str:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return str(path)


def test_good_file_becomes_examples(tmp_path):
    exs = load_longbench("hotpotqa", write(tmp_path / "x.jsonl", [record(1), "", record(2)]))
    assert [e.example_id for e in exs] == ["hotpotqa-id1", "hotpotqa-id2"]
    ex = exs[0]
    assert ex.question == "Who wrote book 1?"
    assert ex.context == "Passage 1.\n\nIt was Ann."  # paragraphs kept, runs collapsed
    assert ex.answers == ["Ann"] and ex.answer_prefix == ""
    assert ex.meta == {"task": "hotpotqa", "metric": "qa_f1", "all_classes": None,
                       "source_id": "id1", "language": "en", "length_words": 5}


def test_directory_form_and_longbench_e_fallback(tmp_path):
    write(tmp_path / "trec_e.jsonl", [record(1, all_classes=["Location", "Person"])])
    (ex,) = load_longbench("trec", str(tmp_path))
    assert ex.meta["metric"] == "classification"
    assert ex.meta["all_classes"] == ["Location", "Person"]
    write(tmp_path / "trec.jsonl", [record(7)])
    assert load_longbench("trec", str(tmp_path))[0].meta["source_id"] == "id7"


def test_code_tasks_keep_indentation(tmp_path):
    code = "def f():\n    return  1\n"
    (ex,) = load_longbench("lcc", write(tmp_path / "lcc.jsonl", [record(1, context=code)]))
    assert ex.context == code and ex.meta["metric"] == "code_sim"


def test_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", [record(1), record(2), "{not json"])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: invalid JSON") as err:
        load_longbench("hotpotqa", path)
    assert err.value.line == 3


@pytest.mark.parametrize("bad, message", [
    ({"input": "q", "context": "c"}, "missing field 'answers'"),
    (record(1, answers="Ann"), "'answers' must be a non-empty list of strings"),
    (record(1, answers=[1]), "'answers' must be a non-empty list of strings"),
    (record(1, all_classes="x"), "'all_classes' must be a list of strings or null"),
    ([1, 2], "expected a JSON object"),
])
def test_malformed_record_names_line_and_field(tmp_path, bad, message):
    path = write(tmp_path / "x.jsonl", [record(1), bad])
    with pytest.raises(DataError, match=rf"line 2: .*{message}"):
        load_longbench("hotpotqa", path)


def test_duplicate_id_is_rejected(tmp_path):
    with pytest.raises(DataError, match=r"line 2: duplicate _id 'id1' \(first on line 1\)"):
        load_longbench("hotpotqa", write(tmp_path / "x.jsonl", [record(1), record(1)]))


def test_empty_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        load_longbench("hotpotqa", write(tmp_path / "empty.jsonl", ["", "  "]))


def test_missing_file_and_directory_say_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="no such file or directory; expected a LongBench"):
        load_longbench("hotpotqa", str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="neither qasper.jsonl nor qasper_e.jsonl"):
        load_longbench("qasper", str(tmp_path))


def test_unknown_task_lists_the_known_ones(tmp_path):
    with pytest.raises(BadInput, match="unknown LongBench task 'hotpot'.*hotpotqa"):
        load_longbench("hotpot", str(tmp_path))


def fake_datasets(monkeypatch, load):
    # a stand-in module: no network, and no slow import of the real `datasets`
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))


def test_hub_failure_tells_the_user_to_set_a_path(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    fake_datasets(monkeypatch, offline)
    with pytest.raises(BadInput, match="ConnectionError: no network.*set dataset.path"):
        load_longbench("hotpotqa", None)


def test_hub_rows_are_checked_like_file_lines(monkeypatch):
    asked = []

    def load(name, task, split):
        asked.append((name, task, split))
        return [record(1), record(2, answers=None)]

    fake_datasets(monkeypatch, load)
    with pytest.raises(DataError, match="THUDM/LongBench:musique, line 2: .*'answers'"):
        load_longbench("musique", None)
    assert asked == [("THUDM/LongBench", "musique", "test")]
