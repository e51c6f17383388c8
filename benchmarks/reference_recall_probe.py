"""Does the reference shape learn to bind a key to its value? The probe behind recipe G.

Contexts of needles only (no haystack), every key asked once after them, loss on the answers:
the first hop of retrieval in its barest form. ``--wording ruler`` uses the generator's needle
and question (``the special magic number for KEY is: 4985193.``, then the RULER question and
answer prefix); ``--wording compact`` writes ``KEY 4985193.`` and asks ``? KEY``, and
``--no-space`` drops the word tokenizer's standalone ``▁`` before numbers, so the value follows
its key directly (plain induction). ``--init`` sets transformers' ``initializer_range``.

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
import random
import time

import torch
from transformers import LlamaForCausalLM

from kv_transition.data import vocab
from kv_transition.data.synthetic import single_key_question
from kv_transition.reference.dataset import IGNORE
from kv_transition.reference.model import model_config, special_ids, word_tokenizer


def _row(args, rng, encode, eos) -> tuple[list[int], list[bool], list[int]]:
    """(ids, loss mask, positions predicting a first digit group) of one context + questions."""
    keys = rng.sample(vocab.KEYS, args.n_now)
    values = [str(rng.randrange(10 ** 6, 10 ** 7)) for _ in keys]
    ruler = args.wording == "ruler"
    ids = []
    for k, v in zip(keys, values):
        ids += encode(f"The special magic number for {k} is: {v}. " if ruler else f"{k} {v}. ")
    mask, firsts = [False] * len(ids), []
    for i in rng.sample(range(len(keys)), len(keys)):
        question, prefix = single_key_question(keys[i])
        ask = encode(f"\n\nQuestion: {question}\nAnswer: {prefix}" if ruler else f" ? {keys[i]}")
        answer = encode(f" {values[i]}.") + [eos]
        ids += ask
        mask += [False] * len(ask)
        # the position before the first digit group predicts it (past the "▁" if kept)
        firsts.append(len(ids) - 1 + (0 if args.no_space else 1))
        ids += answer
        mask += [True] * len(answer)
    return ids, mask, firsts


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
    width = 1 + max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), width), specials["pad"])
    labels = torch.full((len(rows), width), IGNORE)
    first = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for b, (row, mask, firsts) in enumerate(rows):
        full = [specials["bos"]] + row
        ids[b, :len(full)] = torch.tensor(full)
        labels[b, 1:len(full)] = torch.tensor([t if m else IGNORE for t, m in zip(row, mask)])
        first[b, [p + 1 for p in firsts]] = True  # +1: BOS shifts every position
    return ids, labels[:, 1:], first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--needles", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--init", type=float, default=0.1, help="initializer_range of the weights")
    ap.add_argument("--wording", choices=("ruler", "compact"), default="ruler")
    ap.add_argument("--no-space", action="store_true", help="drop the '▁' token before numbers")
    ap.add_argument("--needles-max", type=int, default=0,
                    help="draw each step's needle count from --needles to this")
    ap.add_argument("--schedule", type=_schedule, default=None,
                    help="curriculum STEP:MAX,... : from STEP, 1 to MAX needles per step")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the probed shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = word_tokenizer()
    space = tok.token_to_id("\u2581")
    encode = lambda text: [i for i in tok.encode(text, add_special_tokens=False).ids  # noqa: E731
                           if not (args.no_space and i == space)]
    config = model_config("reference", tok)
    config.initializer_range = args.init
    config.num_hidden_layers = args.layers
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(0)
    print(f"`{' '.join(['benchmarks/reference_recall_probe.py'] + [f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(args).items()])}`\n")
    print("| step | needles | answer loss | first-group accuracy | seconds |\n"
          "|---:|---:|---:|---:|---:|")
    start = time.monotonic()
    for step in range(1, args.steps + 1):
        args.step = step
        ids, gold, first = _batch(args, rng, encode, special_ids(tok))
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 gold.reshape(-1), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0:
            acc = (logits.argmax(-1)[first] == gold[first]).float().mean().item()
            print(f"| {step} | {args.n_now} | {loss.item():.3f} | {acc:.3f} | "
                  f"{time.monotonic() - start:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
