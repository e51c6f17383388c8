"""Does the reference shape learn to bind a key to its value? The probe behind recipe G.

Contexts of needles only (no haystack), every key asked once after them, loss on the answers:
the first hop of retrieval in its barest form. ``--wording ruler`` uses the generator's needle
and question (``the special magic number for KEY is: 4985193.``, then the RULER question and
answer prefix); ``--wording compact`` writes ``KEY 4985193.`` and asks ``? KEY``, and
``--no-space`` drops the word tokenizer's standalone ``▁`` before numbers, so the value follows
its key directly (plain induction). ``--init`` sets transformers' ``initializer_range``.
``--repeats R`` writes each needle R times in shuffled order, the values of its repeats
carrying loss; ``--save`` and ``--init-from`` chain probes into stages (the binding stages of
``kv-transition reference train``, MODEL_CARD.md):

    .venv/bin/python benchmarks/reference_recall_probe.py --needles 4 --repeats 3 --batch 32 \
        --steps 2600 --wording compact --no-space --threads 1 --save /tmp/compact.pt
    .venv/bin/python benchmarks/reference_recall_probe.py --needles 4 --repeats 3 --batch 32 \
        --steps 850 --wording ruler --threads 1 --init-from /tmp/compact.pt

    .venv/bin/python benchmarks/reference_recall_probe.py --needles 1 --init 0.02 --steps 200
    .venv/bin/python benchmarks/reference_recall_probe.py --needles 1 --init 0.1 --steps 200
    .venv/bin/python benchmarks/reference_recall_probe.py --needles 2 --init 0.1 --steps 800
    .venv/bin/python benchmarks/reference_recall_probe.py --needles 2 --needles-max 8 --steps 1500
    .venv/bin/python benchmarks/reference_recall_probe.py --schedule 0:1,150:2,700:4,1100:8 \
        --steps 1600

Prints a Markdown table: answer loss and the accuracy of each answer's first digit group (the
one only retrieval can give; chance 1/900, copying some value of the context 1/needles).
"""

from __future__ import annotations

import argparse
import functools
import random
import time

import torch
from transformers import LlamaForCausalLM

from kv_transition.data import vocab
from kv_transition.data.synthetic import single_key_question
from kv_transition.reference.dataset import IGNORE
from kv_transition.reference.model import model_config, special_ids, word_tokenizer


def _row(args, rng, encode, eos) -> tuple[list[int], list[bool], list[int], list[int]]:
    """(ids, loss mask, positions predicting an answer's first digit group, and a repeated
    needle's) of one context + questions."""
    keys = rng.sample(vocab.KEYS, args.n_now)
    values = [str(rng.randrange(10 ** (args.digits - 1), 10 ** args.digits)) for _ in keys]
    ruler = args.wording == "ruler" or (args.wording == "mixed" and rng.random() < 0.5)
    encode = functools.partial(encode, drop_space=args.no_space and not ruler)
    mixed_compact = args.wording == "mixed" and not ruler
    ids, mask, firsts, seen, reps = [], [], [], set(), []
    order = [i for i in range(len(keys)) for _ in range(args.repeats)]
    rng.shuffle(order)
    for i in order:
        k, v = keys[i], values[i]
        lead = encode(f"The special magic number for {k} is:" if ruler else
                      (f" {k}" if args.spaced_keys else k))
        value = encode(f" {v}. ")
        ids += lead
        mask += [args.lm] * len(lead)
        if i in seen:  # a repeat: its value is known only by binding it to the key
            reps.append(len(ids) - 1 + (0 if args.no_space and not ruler else 1))
        ids += value
        mask += [args.lm or i in seen] * len(value)
        seen.add(i)
    for i in rng.sample(range(len(keys)), len(keys)):
        question, prefix = single_key_question(keys[i])
        ask = encode(f"\n\nQuestion: {question}\nAnswer: {prefix}" if ruler else f" ? {keys[i]}")
        answer = encode(f" {values[i]}.") + [eos]
        ids += ask
        mask += [args.lm] * len(ask)
        # the position before the first digit group predicts it (past the "▁" if kept)
        (reps if mixed_compact else firsts).append(
            len(ids) - 1 + (0 if args.no_space and not ruler else 1))
        ids += answer
        mask += [True] * len(answer)
    return ids, mask, firsts, reps


def _rows_now(args, rng) -> int:
    """Needles per row this step, and rows: a fixed count (--needles), one drawn from
    --needles..--needles-max, or from 1 up to the count --schedule gives at this step (a
    curriculum). Drawn counts keep the step's answers about constant: batch x 2 / (n + 1)
    rows."""
    if not (args.schedule or args.needles_max):
        args.n_now = args.needles
        return args.batch
    if args.schedule:
        args.n_now = rng.randint(1, [k for start, k in args.schedule if args.step >= start][-1])
    else:
        args.n_now = rng.randint(args.needles, args.needles_max)
    return max(1, args.batch * 2 // (args.n_now + 1))


def _schedule(text: str) -> list[tuple[int, int]]:
    """'0:1,150:2,700:4' -> from step 0 up to 1 needle, from step 150 up to 2, ..."""
    return [tuple(map(int, part.split(":"))) for part in text.split(",")]


def _batch(args, rng, encode, specials):
    rows = [_row(args, rng, encode, specials["eos"]) for _ in range(_rows_now(args, rng))]
    width = 1 + max(len(row[0]) for row in rows)
    ids = torch.full((len(rows), width), specials["pad"])
    labels = torch.full((len(rows), width), IGNORE)
    first = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    repeat = torch.zeros_like(first)
    for b, (row, mask, firsts, reps) in enumerate(rows):
        full = [specials["bos"]] + row
        ids[b, :len(full)] = torch.tensor(full)
        labels[b, 1:len(full)] = torch.tensor([t if m else IGNORE for t, m in zip(row, mask)])
        first[b, [p + 1 for p in firsts]] = True  # +1: BOS shifts every position
        repeat[b, [p + 1 for p in reps]] = True
    return ids, labels[:, 1:], first, repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--needles", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--init", type=float, default=0.1, help="initializer_range of the weights")
    ap.add_argument("--wording", choices=("ruler", "compact", "mixed"), default="ruler",
                    help="mixed: each row either (--no-space applies to compact rows only); "
                         "the first-group column then scores ruler rows, the last column "
                         "compact rows' answers and all repeats")
    ap.add_argument("--no-space", action="store_true", help="drop the '▁' token before numbers")
    ap.add_argument("--needles-max", type=int, default=0,
                    help="draw each step's needle count from --needles to this")
    ap.add_argument("--schedule", type=_schedule, default=None,
                    help="curriculum STEP:MAX,... : from STEP, 1 to MAX needles per step")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the probed shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=1,
                    help="each needle appears this often in the context, in shuffled order; "
                         "the values of its repeats carry loss")
    ap.add_argument("--digits", type=int, default=7,
                    help="digits of a value (7 as the generator; 3 is one digit group)")
    ap.add_argument("--spaced-keys", action="store_true",
                    help="compact: write context keys as the questions do ('▁KEY', one token), "
                         "so an answer matches the same token as a repeat")
    ap.add_argument("--lm", action="store_true", help="loss on every token, not only answers")
    ap.add_argument("--seed", type=int, default=0, help="seeds the weights and the data")
    ap.add_argument("--init-from", default=None,
                    help="start from the weights another probe saved (a staged recipe)")
    ap.add_argument("--save", default=None, help="save the weights here at the end")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = word_tokenizer()
    space = tok.token_to_id("\u2581")
    def encode(text: str, drop_space: bool) -> list[int]:
        return [i for i in tok.encode(text, add_special_tokens=False).ids
                if not (drop_space and i == space)]
    config = model_config("reference", tok)
    config.initializer_range = args.init
    config.num_hidden_layers = args.layers
    model = LlamaForCausalLM(config)
    if args.init_from:
        model.load_state_dict(torch.load(args.init_from, weights_only=True))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(args.seed)
    print(f"`{' '.join(['benchmarks/reference_recall_probe.py'] + [f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(args).items()])}`\n")
    print("| step | needles | loss | first-group accuracy | on repeats | seconds |\n"
          "|---:|---:|---:|---:|---:|---:|")
    start = time.monotonic()
    for step in range(1, args.steps + 1):
        args.step = step
        ids, gold, first, repeat = _batch(args, rng, encode, special_ids(tok))
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 gold.reshape(-1), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0:
            hit = logits.argmax(-1) == gold
            acc = hit[first].float().mean().item()
            rep = f"{hit[repeat].float().mean().item():.3f}" if repeat.any() else "-"
            print(f"| {step} | {args.n_now} | {loss.item():.3f} | {acc:.3f} | {rep} | "
                  f"{time.monotonic() - start:.0f} |",
                  flush=True)
            if args.save:  # at every log, so a run stopped by a time limit keeps its weights
                torch.save(model.state_dict(), args.save)


if __name__ == "__main__":
    main()
