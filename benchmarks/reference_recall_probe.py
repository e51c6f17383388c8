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
from kv_transition.reference import qa
from kv_transition.reference.dataset import IGNORE
from kv_transition.reference.model import model_config, special_ids, word_tokenizer


def _row(args, rng, encode, eos) -> tuple[list[int], list[bool], list[int]]:
    """(ids, loss mask, positions predicting a first digit group) of one context + questions."""
    keys = rng.sample(vocab.KEYS, args.needles)
    values = [str(rng.randrange(10 ** 6, 10 ** 7)) for _ in keys]
    ruler = args.wording == "ruler"
    ids = []
    for k, v in zip(keys, values):
        ids += encode(f"The special magic number for {k} is: {v}. " if ruler else f"{k} {v}. ")
    mask, firsts = [False] * len(ids), []
    for i in rng.sample(range(len(keys)), len(keys)):
        question, prefix = qa.single_key_question(keys[i])
        ask = encode(f"\n\nQuestion: {question}\nAnswer: {prefix}" if ruler else f" ? {keys[i]}")
        answer = encode(f" {values[i]}.") + [eos]
        ids += ask
        mask += [False] * len(ask)
        # the position before the first digit group predicts it (past the "▁" if kept)
        firsts.append(len(ids) - 1 + (0 if args.no_space else 1))
        ids += answer
        mask += [True] * len(answer)
    return ids, mask, firsts


def _batch(args, rng, encode, specials):
    rows = [_row(args, rng, encode, specials["eos"]) for _ in range(args.batch)]
    width = 1 + max(len(ids) for ids, _, _ in rows)
    ids = torch.full((args.batch, width), specials["pad"])
    labels = torch.full((args.batch, width), IGNORE)
    first = torch.zeros((args.batch, width - 1), dtype=torch.bool)
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
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    rng = random.Random(0)
    print(f"`{' '.join(['benchmarks/reference_recall_probe.py'] + [f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(args).items()])}`\n")
    print("| step | answer loss | first-group accuracy | seconds |\n|---:|---:|---:|---:|")
    start = time.monotonic()
    for step in range(1, args.steps + 1):
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
            print(f"| {step} | {loss.item():.3f} | {acc:.3f} | {time.monotonic() - start:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
