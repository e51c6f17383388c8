"""Binding stages: needle-only rows in two wordings, and the stages ahead of the families."""

import random

import pytest
import torch

from kv_transition.data import prompt as prompt_tpl
from kv_transition.data.synthetic import single_key_question
from kv_transition.reference import qa
from kv_transition.reference.binding import COMPACT, RULER, binding_row
from kv_transition.reference.dataset import IGNORE, DataPlan, StepBatches
from kv_transition.reference.model import digit_ids, word_tokenizer
from kv_transition.reference.train import _maybe_end_stage, answer_loss, train
from reference_testkit import smoke_config, train_log

PLAN = DataPlan(seed=3, steps=40, tokens_per_step=600, min_len=96, max_len=400,
                short_len=128, hold_frac=0.1, ramp_frac=0.25, binding=(COMPACT, RULER),
                binding_needles=3, binding_repeats=2, binding_rows=4)


def _numbers(tok, ids, mask=None):
    """The numbers of a row (runs of digit groups), only the supervised ones with ``mask``."""
    digits, runs, last = set(digit_ids(tok)), [], False
    for i, m in zip(ids, mask or [True] * len(ids)):
        if m and i in digits:
            runs[-1:] = [runs[-1] + tok.id_to_token(i)] if last else runs[-1:] + [tok.id_to_token(i)]
        last = bool(m and i in digits)
    return runs


@pytest.mark.parametrize("wording", [COMPACT, RULER])
def test_repeats_and_answers_carry_loss_and_first_occurrences_do_not(wording):
    tok = word_tokenizer()
    ids, mask = binding_row(tok, random.Random(1), needles=3, repeats=2, wording=wording)
    values = _numbers(tok, ids)
    # each value: once unsupervised (first occurrence), once as a repeat, once as an answer
    assert len(values) == 9 and all(values.count(v) == 3 and len(v) == 7 for v in values)
    supervised = _numbers(tok, ids, mask)
    # the repeat and the answer of each value, never its first occurrence
    assert len(supervised) == 6 and all(supervised.count(v) == 2 for v in set(values))
    first = [i for i, m in enumerate(mask) if m][0]
    assert _numbers(tok, ids[:first]) and not any(mask[:first])
    assert ids.count(tok.token_to_id("</s>")) == 3 and mask[-1]  # every key asked once


def test_compact_rows_put_the_value_right_after_its_key_and_ruler_rows_read_like_prompts():
    tok = word_tokenizer()
    space = tok.token_to_id("\u2581")
    ids, _ = binding_row(tok, random.Random(2), 2, 2, COMPACT)
    assert space not in ids
    digits = set(digit_ids(tok))
    firsts = [i for i in range(1, len(ids)) if ids[i] in digits and ids[i - 1] not in digits]
    assert all(tok.id_to_token(ids[i - 1]).lstrip("\u2581").isalpha() for i in firsts)
    ids, _ = binding_row(tok, random.Random(2), 2, 2, RULER)
    text = tok.decode(ids)
    context, *questions = text.split("\n\n")
    assert len(qa.facts(context.replace("the special", "The special"))) == 4  # 2 needles x 2
    for block in questions:
        key = block.split(" for ")[1].split()[0]
        question, prefix = single_key_question(key)
        assert block.startswith(prompt_tpl.question_part(question, prefix).lower())


def test_stages_follow_the_recorded_starts_and_the_families_hold_from_their_start():
    assert [PLAN.stage_of(s, []) for s in (0, 39)] == [0, 0]
    assert [PLAN.stage_of(s, [5, 9]) for s in (4, 5, 8, 9, 30)] == [0, 1, 1, 2, 2]
    tok = word_tokenizer()
    batches = StepBatches(PLAN, stage_starts=[5, 9])
    assert tok.token_to_id("\u2581") not in batches[0]["input_ids"].tolist()[0]
    ruler = batches[5]
    assert int(ruler["lm"]) == 0 and "special magic" in tok.decode(ruler["input_ids"][0].tolist())
    families = batches[9]
    assert "lm" not in families and "read" in tok.decode(families["input_ids"][0].tolist())
    # the hold (0.1 x 40 steps) counts from the families' start at step 9, not from step 0
    assert PLAN.length_cap(12, None, families_start=9) == 128
    assert PLAN.length_cap(14, None, families_start=9) > 128
    assert batches.families_start == 9 and batches.stages_done
    assert not StepBatches(PLAN, stage_starts=[5]).stages_done
    assert StepBatches(PLAN, stage_starts=[5]).families_start is None  # not known yet


def test_a_stage_ends_when_its_first_groups_are_right_or_its_steps_run_out():
    logs = []
    cfg = smoke_config("unused", steps=40)
    cfg.data = PLAN
    batches, progress = StepBatches(PLAN), {"step": 10}
    _maybe_end_stage(cfg, batches, progress, {"first_group_acc": 0.5}, logs.append)
    assert batches.stage_starts == [] and not logs
    _maybe_end_stage(cfg, batches, progress, {"first_group_acc": 0.95}, logs.append)
    assert batches.stage_starts == progress["stage_starts"] == [10] and "compact" in logs[0]
    progress["step"] = 10 + PLAN.binding_max_steps
    _maybe_end_stage(cfg, batches, progress, {"first_group_acc": 0.0}, logs.append)
    assert batches.stage_starts == [10, progress["step"]] and "steps passed" in logs[1]


def test_each_stage_has_its_own_gate_and_step_limit():
    plan = DataPlan(**{**PLAN.__dict__, "binding_gate": (0.97, 0.9),
                       "binding_max_steps": (20, 5)})
    assert plan.stage_limits(0) == (0.97, 20) and plan.stage_limits(1) == (0.9, 5)
    assert PLAN.stage_limits(1) == (PLAN.binding_gate, PLAN.binding_max_steps)  # one for all
    cfg, logs = smoke_config("unused", steps=40), []
    cfg.data = plan
    batches, progress = StepBatches(plan), {"step": 10}
    _maybe_end_stage(cfg, batches, progress, {"first_group_acc": 0.95}, logs.append)
    assert batches.stage_starts == []  # 0.95 binds stage 2 (0.9), not stage 1 (0.97)
    progress["step"] = 20
    _maybe_end_stage(cfg, batches, progress, {"first_group_acc": 0.5}, logs.append)
    assert batches.stage_starts == [20] and "20 steps passed" in logs[0]
    progress["step"] = 22
    _maybe_end_stage(cfg, batches, progress, {"first_group_acc": 0.92}, logs.append)
    assert batches.stage_starts == [20, 22] and ">= 0.9" in logs[1]


def test_first_group_accuracy_counts_only_a_values_leading_group():
    tok = word_tokenizer()
    ids, mask = binding_row(tok, random.Random(4), 2, 2, COMPACT)
    batch = {"input_ids": torch.tensor([[1] + ids]),
             "labels": torch.tensor([[IGNORE] + [i if m else IGNORE for i, m in zip(ids, mask)]]),
             "lm": torch.tensor(0)}

    class Echo(torch.nn.Module):  # predicts every label exactly: all counts are hits
        def __init__(self):
            super().__init__()
            self.model = self
            self.vocab = tok.get_vocab_size()

        def forward(self, input_ids, use_cache=False):
            nxt = torch.cat([input_ids[:, 1:], input_ids[:, :1]], 1)
            return type("O", (), {"last_hidden_state": nxt.unsqueeze(-1).float()})

        def lm_head(self, x):
            return torch.nn.functional.one_hot(x.squeeze(-1).long(), self.vocab).float() * 50

    loss, hit, value_hit, values, first_hit, firsts = answer_loss(
        Echo(), batch, torch.device("cpu"), torch.tensor(digit_ids(tok)), lm_weight=1.0)
    # 2 needles x (1 repeat + 1 answer) values of 3 groups: 12 value tokens, 4 leading groups
    assert (int(values), int(firsts)) == (12, 4) and int(first_hit) == 4 and float(loss) < 1e-3


def test_training_passes_through_the_stages_and_logs_them(tmp_path):
    cfg = smoke_config(tmp_path, steps=8)
    cfg.data = DataPlan(**{**cfg.data.__dict__, "binding": (COMPACT, RULER),
                           "binding_max_steps": 3, "binding_rows": 2})
    assert train(cfg, log=lambda _: None)["done"]
    stages = [entry["stage"] for entry in train_log(tmp_path)]
    assert stages == ["compact"] * 3 + ["ruler"] * 3 + ["families"] * 2


def test_a_run_resumed_across_stage_ends_equals_an_uninterrupted_one(tmp_path):
    def config(out):
        cfg = smoke_config(out, steps=6)
        cfg.data = DataPlan(**{**cfg.data.__dict__, "binding": (COMPACT, RULER),
                               "binding_max_steps": 2, "binding_rows": 2})
        return cfg

    quiet = {"log": lambda _: None}
    train(config(tmp_path / "whole"), **quiet)
    result = train(config(tmp_path / "legs"), max_minutes=0, **quiet)  # one step per leg
    while not result["done"]:
        result = train(config(tmp_path / "legs"), resume=True, max_minutes=0, **quiet)
    from safetensors.torch import load_file
    whole, legs = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "legs"))
    assert whole.keys() == legs.keys() and all(torch.equal(whole[k], legs[k]) for k in whole)
    assert [e["stage"] for e in train_log(tmp_path / "legs")] == \
        [e["stage"] for e in train_log(tmp_path / "whole")]


def test_the_rate_holds_its_peak_while_binding_and_decays_from_the_families_start():
    from kv_transition.reference.train import lr_at

    cfg = smoke_config("unused", steps=100, warmup=4)
    assert lr_at(cfg, 0, None) < lr_at(cfg, 3, None) == cfg.lr
    assert lr_at(cfg, 60, None) == cfg.lr == lr_at(cfg, 39, 40)  # binding: the peak
    decay = [lr_at(cfg, s, 40) for s in range(40, 100)]
    assert decay[0] == cfg.lr and decay == sorted(decay, reverse=True)
    assert abs(decay[-1] - cfg.lr * cfg.min_lr_frac) < 1e-4
    # without binding stages the families start at 0: the cosine runs over the whole run
    assert lr_at(cfg, 50, 0) < cfg.lr
