"""Training batches: loss only on answers, prompts encoded as the engine encodes, curriculum."""

import random

import torch
from transformers import AutoTokenizer

from kv_transition.data import prompt as prompt_tpl
from kv_transition.data.synthetic import generate_examples
from kv_transition.reference import formats, qa
from kv_transition.reference.dataset import IGNORE, DataPlan, StepBatches, build_sequence
from kv_transition.reference.model import digit_ids, save_tokenizer, word_tokenizer

PLAN = DataPlan(seed=5, steps=10, tokens_per_step=600, min_len=96, max_len=200)


def _count(tok):
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def test_only_answer_tokens_and_their_eos_carry_loss():
    tok = word_tokenizer()
    ex = generate_examples("niah_multikey", 150, 1, 0, _count(tok))[0]
    asks = qa.asks_for(ex, random.Random(1), {f: 1.0 for f in formats.FORMATS})
    ids, mask = build_sequence(tok, ex, asks)
    eos = tok.token_to_id("</s>")
    supervised = [i for i, m in zip(ids, mask) if m]
    expected = []
    for ask in asks:
        expected += tok.encode(ask.target, add_special_tokens=False).ids + [eos]
    assert supervised == expected
    assert len(asks) == 4 and sum(mask) < len(mask) // 3  # dense, yet only the answers
    # every key/value of the context is answered somewhere
    answered = tok.decode(supervised)
    assert all(v in answered for _, v in qa.facts(ex.context))


def test_first_question_is_encoded_exactly_like_the_engines_prompt(tmp_path):
    save_tokenizer(tmp_path)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    tok = word_tokenizer()
    ex = generate_examples("variable_tracking", 150, 1, 2, _count(tok))[0]
    ids, mask = build_sequence(tok, ex, qa.asks_for(ex, random.Random(0), {formats.TEXT: 1.0}))
    # HFEngine.encode: context part with BOS, then the question part without specials
    ctx = hf_tok(prompt_tpl.context_part(ex.context)).input_ids
    q = hf_tok(prompt_tpl.question_part(ex.question, ex.answer_prefix),
               add_special_tokens=False).input_ids
    assert ids[:len(ctx) + len(q)] == ctx + q
    assert not any(mask[:len(ctx) + len(q)]) and mask[len(ctx) + len(q)]
    assert hf_tok.decode(ids[len(ctx) + len(q):], skip_special_tokens=True).strip() == \
        ", ".join(ex.answers[:-1]).lower() + f" and {ex.answers[-1].lower()}."


def test_batches_depend_only_on_seed_and_step():
    a, b = StepBatches(PLAN), StepBatches(PLAN)
    for step in (7, 0, 3):
        x, y = a[step], b[step]
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
    assert not torch.equal(a[1]["input_ids"][:1, :50], a[2]["input_ids"][:1, :50])
    other = StepBatches(DataPlan(**{**PLAN.__dict__, "seed": 6}))[0]
    assert not torch.equal(other["input_ids"][:1, :50], a[0]["input_ids"][:1, :50])


def test_labels_are_the_inputs_where_supervised():
    batch = StepBatches(PLAN)[4]
    ids, labels = batch["input_ids"], batch["labels"]
    where = labels != IGNORE
    assert where.any() and torch.equal(labels[where], ids[where])
    pad = word_tokenizer().token_to_id("<pad>")
    assert not (where & (ids == pad)).any()


def test_length_cap_holds_short_then_grows_then_holds_and_batches_respect_it():
    plan = DataPlan(steps=100, min_len=128, short_len=256, max_len=1024, hold_frac=0.3,
                    ramp_frac=0.5)
    caps = [plan.length_cap(s) for s in range(100)]
    assert caps[0] == caps[30] == 256 and caps[31] > 256 and caps[80] == caps[99] == 1024
    assert caps == sorted(caps)
    # the gate opening at step 10 starts the ramp there, not at the longest hold
    gated = [plan.length_cap(s, gate_step=10) for s in range(100)]
    assert gated[10] == 256 and gated[11] > 256 and gated[60] == 1024
    assert plan.length_cap(50, gate_step=90) == caps[50]  # a gate after the hold changes nothing
    ds = StepBatches(PLAN)
    for step in range(0, 10, 3):
        assert PLAN.min_len <= int(ds[step]["context_tokens"]) <= PLAN.length_cap(step)


def test_short_share_draws_that_share_of_steps_at_short_lengths():
    base = dict(seed=3, steps=200, tokens_per_step=2000, min_len=96, short_len=120,
                max_len=1000, hold_frac=0.0, ramp_frac=0.0, gate_acc=0.0,
                family_weights={"niah_single": 1.0})
    shared, plain = DataPlan(**base, short_share=0.5), DataPlan(**base)
    lengths = lambda plan: [int(StepBatches(plan)[s]["context_tokens"])  # noqa: E731
                            for s in range(1, 41)]
    short = [n for n in lengths(shared) if n <= 120]
    # uniform over [96, 1000] puts ~3% at or below 120; half the steps drawn short puts ~50%
    assert 10 <= len(short) <= 30
    assert sum(n <= 120 for n in lengths(plain)) <= 5
    assert max(lengths(DataPlan(**base, short_share=1.0))) <= 120


def test_family_lengths_draw_a_familys_steps_from_its_own_range():
    base = dict(seed=3, steps=200, tokens_per_step=2000, min_len=96, short_len=1000,
                max_len=1000, hold_frac=0.0, ramp_frac=0.0, gate_acc=0.0)
    multikey, single = {"niah_multikey": 1.0}, {"niah_single": 1.0}
    ranges = {"niah_multikey": (800, 1000)}
    lengths = lambda plan, steps: [int(StepBatches(plan)[s]["context_tokens"])  # noqa: E731
                                   for s in steps]
    ranged = lengths(DataPlan(**base, family_weights=multikey, family_lengths=ranges),
                     range(1, 21))
    assert min(ranged) >= 800
    assert min(lengths(DataPlan(**base, family_weights=multikey), range(1, 21))) < 800
    # a family without a range keeps the step's draw, and nothing extra is drawn: a plan
    # without ranges sees the batches it always saw
    for step in (1, 7):
        plain = StepBatches(DataPlan(**base, family_weights=single))[step]["input_ids"]
        other = StepBatches(DataPlan(**base, family_weights=single,
                                     family_lengths=ranges))[step]["input_ids"]
        assert torch.equal(plain, other)
    # the cap still bounds a family's range (here while the curriculum holds at 120 tokens)
    held = DataPlan(**{**base, "short_len": 120, "hold_frac": 1.0}, family_weights=multikey,
                    family_lengths=ranges)
    assert max(lengths(held, range(1, 6))) <= 120


def test_log_drawn_ranges_give_every_doubling_of_length_the_same_share():
    rng = random.Random(4)
    draws = lambda how: [DataPlan(family_lengths={"niah_multivalue": (96, 2304)},  # noqa: E731
                                  family_length_draw=how).family_length("niah_multivalue",
                                                                        2304, rng)
                         for _ in range(2000)]
    log, uniform = draws("log"), draws("uniform")
    assert min(log) >= 96 and max(log) <= 2304
    # 96-384 is two doublings of the range's 4.6: ~44% of log draws, ~13% of uniform ones
    assert 0.39 <= sum(n <= 384 for n in log) / 2000 <= 0.49
    assert 0.09 <= sum(n <= 384 for n in uniform) / 2000 <= 0.17
    assert 96 <= DataPlan(family_lengths={"niah_multivalue": (96, 2304)},
                          family_length_draw="log").family_length("niah_multivalue", 100,
                                                                  rng) <= 100


def _copies(tok, ex, seed, spans):
    ids, mask = build_sequence(tok, ex, [], random.Random(seed), spans)
    return ids, mask


def test_repeated_spans_copy_earlier_text_with_loss_on_the_predictable_part():
    tok = word_tokenizer()
    ex = generate_examples("niah_multikey", 300, 1, 3, _count(tok))[0]
    plain, _ = build_sequence(tok, ex, [])
    for seed in range(6):
        ids, mask = _copies(tok, ex, seed, spans=2)
        assert len(ids) > len(plain) and any(mask)
        # every supervised token continues a copy of text that appeared earlier
        starts = [i for i in range(1, len(ids)) if mask[i] and not mask[i - 1]]
        for i in starts:
            run = ids[i:i + next((k for k, m in enumerate(mask[i:]) if not m), len(ids) - i)]
            earlier = ids[:i]
            assert any(earlier[j:j + len(run)] == run for j in range(len(earlier))), run
        # no copy lands inside a needle: each one still reads whole
        for key, value in qa.facts(ex.context):
            needle = tok.encode(f" for {key} is: {value}.", add_special_tokens=False).ids
            assert any(ids[j:j + len(needle)] == needle for j in range(len(ids))), key


def test_multivalue_contexts_never_repeat_a_needle():
    tok = word_tokenizer()
    ex = generate_examples("niah_multivalue", 300, 1, 4, _count(tok))[0]
    digits = set(digit_ids(tok))
    for seed in range(8):
        ids, mask = _copies(tok, ex, seed, spans=3)
        assert not any(m and t in digits for t, m in zip(ids, mask))
        assert sum(t in digits for t in ids) == 4 * 3  # four 7-digit values (3 groups), no copies


def test_recall_steps_hold_needles_only_one_count_per_step_and_ask_every_key():
    from kv_transition.reference.dataset import RECALL, RECALL_MAX_NEEDLES

    plan = DataPlan(**{**PLAN.__dict__, "family_weights": {RECALL: 1.0}})
    tok = word_tokenizer()
    for step in range(4):
        batch = StepBatches(plan)[step]
        counts = set()
        for row, labels in zip(batch["input_ids"], batch["labels"]):
            text = tok.decode([i for i in row.tolist() if i != tok.token_to_id("<pad>")])
            context = text.split("\n\n")[1]
            facts = qa.facts(context.replace("the special", "The special"))
            # nothing but needles: the context is exactly its facts in the generator's wording
            assert context == " ".join(f"the special magic number for {k} is: {v}."
                                       for k, v in facts)
            answered = tok.decode([i for i in labels.tolist() if i != IGNORE])
            assert all(v in answered for _, v in facts)  # every key asked and answered
            counts.add(len(facts))
        assert len(counts) == 1 and 1 <= counts.pop() <= RECALL_MAX_NEEDLES
        assert int((batch["input_ids"] != tok.token_to_id("<pad>")).sum()) >= plan.tokens_per_step
