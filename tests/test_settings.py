import pytest

from kv_transition.errors import BadInput
from kv_transition.settings import load_settings


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_config_validates():
    from kvt_testkit import REPO

    s = load_settings(REPO / "config" / "default.yaml")
    assert s.engine.kind == "hf"
    assert s.kv.budgets == [1.0, 0.5, 0.2]
    assert s.kv.all_policies() == ["snapkv", "streamingllm"]
    # a fixed 256-token cache: whole in the shortest bin, an eighth of the longest, so
    # the default's compressed curve falls with length (fractions keep it flat, MODEL_CARD.md)
    assert s.kv.budget_tokens == [256] and s.dataset.lengths[:2] == [128, 256]
    # the trained bundled model (issue 12): five bins up to 2,048 tokens, three or more of the
    # families it solves, multi-key among them
    assert s.model.name == "builtin:reference"
    assert len(s.dataset.lengths) == 5 and max(s.dataset.lengths) >= 2048
    assert len(s.dataset.tasks) >= 3 and "niah_multikey" in s.dataset.tasks


def test_pinned_longbench_config_validates():
    from kvt_testkit import REPO

    s = load_settings(REPO / "config" / "experiments" / "snapkv_longbench.yaml")
    assert s.dataset.name == "longbench" and s.kv.budgets == [1.0, 0.5, 0.2]
    assert s.binning.n_bins == 5


def test_unknown_key_names_the_field(tmp_path):
    with pytest.raises(BadInput, match=r"kv\.budget: unknown key"):
        load_settings(_write(tmp_path, "kv:\n  budget: [1.0]\n"))


@pytest.mark.parametrize("budget", ["0.0", "1.5", "-0.2"])
def test_budget_out_of_range(tmp_path, budget):
    with pytest.raises(BadInput, match=r"kv\.budgets.*\(0, 1\]"):
        load_settings(_write(tmp_path, f"kv:\n  budgets: [1.0, {budget}]\n"))


def test_unknown_policy_lists_allowed(tmp_path):
    with pytest.raises(BadInput, match=r"unknown policy 'snapkvv'.*allowed:.*snapkv"):
        load_settings(_write(tmp_path, "kv:\n  policy: snapkvv\n"))


def test_set_overrides_parse_yaml(tmp_path):
    s = load_settings(_write(tmp_path, "kv:\n  policy: snapkv\n"),
                      ["kv.budgets=[1.0,0.25]", "dataset.path=x.jsonl", "kv.query_aware=true"])
    assert s.kv.budgets == [1.0, 0.25]
    assert s.dataset.path == "x.jsonl"
    assert s.kv.query_aware is True


def test_set_without_equals_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="key.path=value"):
        load_settings(_write(tmp_path, "{}\n"), ["kv.budgets"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(BadInput, match="not valid YAML"):
        load_settings(_write(tmp_path, "kv: [unclosed\n"))


def test_openai_engine_needs_a_url(tmp_path):
    with pytest.raises(BadInput, match="base_url"):
        load_settings(_write(tmp_path, "engine:\n  kind: openai\n"))


def test_snapshot_holds_no_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-value")
    s = load_settings(_write(
        tmp_path, "engine:\n  kind: openai\n  base_url: http://127.0.0.1:9/v1\n  api_key_env: MY_KEY\n"))
    snap = s.snapshot_yaml()
    assert "MY_KEY" in snap and "sk-secret-value" not in snap


def test_dataset_tasks_choose_the_mix_and_are_checked(tmp_path):
    s = load_settings(_write(tmp_path, "dataset:\n  tasks: [niah_single, niah_multikey]\n"))
    assert s.dataset.tasks == ["niah_single", "niah_multikey"]
    for bad in ("[riddles]", "[]"):
        with pytest.raises(BadInput, match="tasks"):
            load_settings(_write(tmp_path, f"dataset:\n  tasks: {bad}\n"))
    with pytest.raises(BadInput, match="tasks"):
        load_settings(_write(tmp_path, "dataset:\n  task: niah_single\n  tasks: [niah_single]\n"))
