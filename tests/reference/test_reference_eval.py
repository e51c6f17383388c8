"""The evaluation command on the smoke model, and ``builtin:reference`` with and without weights."""

import pytest
from typer.testing import CliRunner

from kv_transition.cli import app
from kv_transition.data.normalize import Example
from kv_transition.engines import builtin
from kv_transition.errors import BadInput
from kv_transition.policy.spec import Setting
from kv_transition.reference import evaluate as ev
from kv_transition.reference import formats


def _eval(*args):
    return CliRunner().invoke(app, ["reference", "eval", *map(str, args)])


def test_eval_writes_a_task_by_length_table_per_setting(smoke_model, tmp_path, home):
    out = tmp_path / "table.md"
    # --max-tokens keeps an untrained model's endless answers short
    result = _eval("--model", smoke_model, "--n", 1, "--lengths", "100,140", "--policies",
                   "streamingllm", "--budgets", "0.5", "--max-tokens", 3, "--out", out)
    assert result.exit_code == 0, result.output
    table = out.read_text()
    assert table in result.output
    assert "**full**" in table and "**streamingllm@0.5**" in table
    assert f"reference eval --model {smoke_model} --n 1 --lengths 100,140" in table
    assert "| task | format | 100 | 140 |" in table
    rows = [line for line in table.splitlines() if line.startswith("| niah_") or
            line.startswith("| variable_tracking")]
    # text for the four trained tasks, python and json for the three retrieval tasks, two settings
    assert len(rows) == 2 * (len(ev.TRAINED_TASKS) + 2 * len(formats.FUNCTIONAL_TASKS))
    assert not any(line.startswith("| variable_tracking") for line in rows)
    assert "Target (full-cache accuracy ≥ 0.95 in every cell): **NOT met**" in table


def test_cells_count_every_request_and_score_with_the_projects_metric(smoke_model, home):
    plan = ev.EvalPlan(model=str(smoke_model), lengths=[100], n=3, formats=["text", "json"],
                       max_tokens=3)
    cells = ev.evaluate(plan, home / "data" / "models", log=lambda _: None)
    assert {(c.task, c.fmt) for c in cells} == {(t, "text") for t in ev.TRAINED_TASKS} | {
        (t, "json") for t in formats.FUNCTIONAL_TASKS}
    assert all(c.n == 3 and 0.0 <= c.acc <= 1.0 and len(c.latencies) + c.errors == 3 for c in cells)


def test_token_budgets_are_settings_and_one_longer_than_the_context_keeps_it_whole(
        smoke_model, home):
    settings = [Setting("full", 1.0), Setting("streamingllm", 4000.0),
                Setting("streamingllm", 48.0)]
    plan = ev.EvalPlan(model=str(smoke_model), lengths=[140], n=3, formats=["text"],
                       max_tokens=4, tasks=["niah_single"], settings=settings)
    cells = ev.evaluate(plan, home / "data" / "models", log=lambda _: None)
    by_name = {c.setting: c for c in cells}
    assert list(by_name) == ["full", "streamingllm@4000tok", "streamingllm@48tok"]
    assert by_name["streamingllm@4000tok"].correct == by_name["full"].correct
    result = _eval("--model", smoke_model, "--n", 1, "--lengths", "140", "--formats", "text",
                   "--tasks", "niah_single", "--policies", "snapkv", "--budgets", "0.5,64",
                   "--max-tokens", 2)
    assert result.exit_code == 0 and "**snapkv@64tok**" in result.output, result.output


def test_show_misses_prints_the_wrong_answers_under_the_tables(smoke_model, home):
    # the untrained smoke model answers every needle wrong: each cell keeps its first two
    result = _eval("--model", smoke_model, "--n", 3, "--lengths", "100", "--formats", "text",
                   "--tasks", "niah_single,niah_multikey", "--max-tokens", 2,
                   "--show-misses", 2)
    assert result.exit_code == 0, result.output
    assert "--show-misses 2" in result.output  # the printed command reproduces the list
    lines = result.output.splitlines()
    misses = [line for line in lines if line.startswith("- full niah_") and " → `" in line]
    assert len(misses) == 4 and all("(deepest needle at depth 0." in line for line in misses)
    # then every example by its needle's depth: three evenly spaced depths, all answered wrong
    by_depth = lines[lines.index(next(x for x in lines if x.startswith("**Wrong answers by"))):]
    assert "- full niah_single text 100: 0.1-0.2: 1/1, 0.5-0.6: 1/1, 0.8-0.9: 1/1" in by_depth
    plan = ev.EvalPlan(model=str(smoke_model), lengths=[100], n=2, formats=["text"],
                       max_tokens=2, tasks=["niah_single"])
    cells = ev.evaluate(plan, home / "data" / "models", log=lambda _: None)
    assert cells[0].misses == [] and cells[0].outcomes == []  # kept only when asked for
    assert "Wrong answers" not in ev.markdown(cells, plan, "cmd", "cpu")


def test_misses_are_counted_by_the_depth_of_the_deepest_needle_the_answer_needs():
    single = Example("s", "q", "c", ["1"], {"task": "niah_single", "depth": 0.35})
    multikey = Example("k", "q", "c", ["1"], {"task": "niah_multikey", "depth": 0.1,
                                              "depths": [0.1, 0.35, 0.6, 0.85]})
    multivalue = Example("v", "q", "c", ["1"], {"task": "niah_multivalue",
                                                "depths": [0.4, 0.65, 0.9, 0.15]})
    assert ev.answer_depth(single) == 0.35
    assert ev.answer_depth(multikey) == 0.1  # the asked needle, not the deepest distractor
    assert ev.answer_depth(multivalue) == 0.9  # every value is asked: the deepest counts
    assert ev.answer_depth(Example("x", "q", "c", ["1"], {"task": "qa"})) is None
    outcomes = [(0.92, True), (0.97, False), (0.999, True), (0.41, False), (0.0, True)]
    assert ev._by_depth(outcomes) == "0.0-0.1: 1/1, 0.4-0.5: 0/1, 0.9-1.0: 2/3"


def test_tasks_option_chooses_the_families(smoke_model, home):
    plan = ev.EvalPlan(model=str(smoke_model), lengths=[100], n=1, formats=["text"],
                       max_tokens=2, tasks=["variable_tracking"])
    cells = ev.evaluate(plan, home / "data" / "models", log=lambda _: None)
    assert [(c.task, c.fmt) for c in cells] == [("variable_tracking", "text")]


def test_verdict_names_the_worst_cell():
    good = ev.Cell("full", "niah_single", "text", 256, n=100, correct=99)
    bad = ev.Cell("full", "variable_tracking", "text", 4096, n=100, correct=80)
    assert "**met**" in ev.verdict([good])
    both = ev.verdict([good, bad])
    assert "NOT met" in both and "variable_tracking, text, 4096" in both


def test_card_block_is_replaced_and_a_card_without_markers_is_bad_input(tmp_path):
    card = tmp_path / "CARD.md"
    card.write_text(f"# Card\n{ev.CARD_BEGIN}\nold\n{ev.CARD_END}\ntail\n")
    ev.update_card(card, "| new |\n")
    assert card.read_text() == f"# Card\n{ev.CARD_BEGIN}\n| new |\n{ev.CARD_END}\ntail\n"
    card.write_text("# no block\n")
    with pytest.raises(BadInput, match="reference-eval"):
        ev.update_card(card, "x")


@pytest.mark.parametrize("args,word", [
    (["--lengths", "100,abc"], "--lengths"), (["--formats", "yaml"], "--formats"),
    (["--policies", "nosuch"], "nosuch"),
    (["--budgets", "1.5", "--policies", "snapkv"], "--budgets"),
    (["--budgets", "0.2,2.5", "--policies", "snapkv"], "--budgets"),
    (["--budgets", "0.5,256", "--policies", "int8"], "budget_tokens applies to eviction"),
    (["--dtype", "int4"], "--dtype"), (["--tasks", "niah_single,riddles"], "--tasks")])
def test_eval_bad_arguments_exit_2(smoke_model, home, args, word):
    result = _eval("--model", smoke_model, "--n", 1, *args)
    assert result.exit_code == 2 and word in result.output, result.output


def test_builtin_reference_without_weights_says_how_to_train(tmp_path, monkeypatch, home):
    monkeypatch.setattr(builtin, "REFERENCE_DIR", tmp_path / "reference-model")
    (tmp_path / "reference-model").mkdir()
    (tmp_path / "reference-model" / "MODEL_CARD.md").write_text("# not trained yet\n")
    with pytest.raises(BadInput, match="kv-transition reference train --out"):
        builtin.resolve_builtin("builtin:reference", tmp_path)
    result = _eval("--n", 1, "--lengths", "100")  # default --model builtin:reference
    assert result.exit_code == 2 and "not in this installation yet" in result.output


def test_builtin_reference_resolves_to_the_bundled_directory(smoke_model, monkeypatch, home):
    from kv_transition.engines.hf import HFEngine
    from kv_transition.settings import ModelConfig, PressConfig

    monkeypatch.setattr(builtin, "REFERENCE_DIR", smoke_model)
    assert builtin.resolve_builtin("builtin:reference", home) == smoke_model
    engine = HFEngine(ModelConfig(name="builtin:reference", dtype="float32", device="cpu"),
                      PressConfig(), home / "data" / "models")
    assert engine.path == str(smoke_model) and engine.count_tokens("koala 4985193") == 5
