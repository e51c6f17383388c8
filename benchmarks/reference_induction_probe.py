"""Can the reference shape learn to copy at all? A control for the reference model's recipes.

Sequences of random tokens repeated once, loss on the repeat only: the cleanest copy task, the
attention pattern (find where this occurred before, read what came next) that retrieval needs.
If this learns in a few hundred steps and the real recipe does not, the obstacle is the real
task's signal, not the training code or the shape (MODEL_CARD.md, "Recipes tried").

    .venv/bin/python benchmarks/reference_induction_probe.py [--steps 300] [--threads 1]

Prints a Markdown table of copy loss and accuracy every 50 steps.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaForCausalLM

from kv_transition.reference.model import model_config, word_tokenizer


def _haystack_spans(span: int):
    """Batches of ``span``-token windows of the synthetic generator's filler sentences."""
    import random

    from kv_transition.data import synthetic

    tok, rng = word_tokenizer(), random.Random(0)

    def draw(batch: int) -> torch.Tensor:
        rows = []
        for _ in range(batch):
            text = " ".join(synthetic._Haystack(random.Random(rng.random())).sentences(span))
            rows.append(tok.encode(text, add_special_tokens=False).ids[:span])
        return torch.tensor(rows)
    return draw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--size", default="reference")
    ap.add_argument("--span", type=int, default=48, help="tokens per random span")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--haystack", action="store_true",
                    help="spans of the generator's filler text instead of random tokens")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = model_config(args.size, word_tokenizer())
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    span, vocab = args.span, config.vocab_size
    draw = _haystack_spans(span) if args.haystack else \
        (lambda b: torch.randint(0, vocab, (b, span)))
    print(f"Shape `{args.size}`, {'haystack' if args.haystack else 'random'} spans of {span} tokens repeated once, batch "
          f"{args.batch}, lr {args.lr}, {args.threads} torch threads. Command: `.venv/bin/python "
          f"benchmarks/reference_induction_probe.py --steps {args.steps} --size {args.size} "
          f"--span {span} --batch {args.batch} --lr {args.lr} --threads {args.threads}"
          f"{' --haystack' if args.haystack else ''}`\n")
    print("| step | copy loss | copy token accuracy | seconds |\n|---:|---:|---:|---:|")
    start = time.monotonic()
    for step in range(1, args.steps + 1):
        first = draw(args.batch)
        ids = torch.cat([first, first], 1)
        # the first token of the repeat cannot be known; every later one can
        logits = model(input_ids=ids).logits[:, span:-1]
        gold = ids[:, span + 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), gold.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            acc = (logits.argmax(-1) == gold).float().mean().item()
            print(f"| {step} | {loss.item():.3f} | {acc:.3f} | {time.monotonic() - start:.0f} |")


if __name__ == "__main__":
    main()
