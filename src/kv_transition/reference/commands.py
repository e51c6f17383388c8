"""``kv-transition reference train|eval``: thin wrappers over ``train.train`` and ``evaluate``.

Imported by ``cli.py`` at start-up, so nothing heavy (torch, transformers) is imported here.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from kv_transition import paths
from kv_transition.console import guard as _guard
from kv_transition.console import say as _say
from kv_transition.console import state as _state
from kv_transition.errors import BadInput
from kv_transition.policy.spec import Setting
from kv_transition.reference import evaluate as ev
from kv_transition.reference.binding import WORDINGS
from kv_transition.reference.model import hardware

reference_app = typer.Typer(no_args_is_help=True, help=(
    "Train and evaluate the bundled reference model (see "
    "src/kv_transition/assets/reference-model/MODEL_CARD.md)."))


def _ints(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise BadInput(f"{option} {text!r}: give positive integers separated by commas, "
                       "e.g. 256,512,1024")
    return values


def _budgets(option: str, text: str) -> list[float]:
    """Fractions in (0, 1] and token counts (whole numbers >= 2), as ``kv.budget_tokens``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    fine = lambda v: 0 < v <= 1 or (v >= 2 and v.is_integer())  # noqa: E731
    if not values or not all(fine(v) for v in values):
        raise BadInput(f"{option} {text!r}: give budgets separated by commas, each a fraction "
                       "in (0, 1] or a whole number of tokens >= 2, e.g. 0.5,0.2,256")
    return values


def _wordings(text: str) -> tuple[str, ...]:
    names = tuple(w.strip() for w in text.split(",") if w.strip() and w.strip() != "none")
    bad = [w for w in names if w not in WORDINGS]
    if bad:
        raise BadInput(f"--binding {text!r}: unknown stage {bad[0]!r}; allowed: "
                       f"{', '.join(WORDINGS)}, separated by commas, or 'none'")
    return names


def _families(text: str) -> dict[str, float]:
    """``name:weight,...`` -> the data plan's family weights."""
    # lazy: the data plan's module imports torch, which CLI start-up must not load
    from kv_transition.reference.dataset import DEFAULT_FAMILY_WEIGHTS

    weights = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, weight = item.partition(":")
        try:
            value = float(weight or 1)
        except ValueError:
            value = -1.0
        if name not in DEFAULT_FAMILY_WEIGHTS or value <= 0:
            raise BadInput(f"--families {text!r}: {item!r} is not NAME or NAME:WEIGHT with a "
                           f"weight > 0; names: {', '.join(DEFAULT_FAMILY_WEIGHTS)}")
        weights[name] = value
    if not weights:
        raise BadInput(f"--families {text!r}: name at least one of "
                       f"{', '.join(DEFAULT_FAMILY_WEIGHTS)}")
    return weights


def _family_lengths(text: str) -> dict[str, tuple[int, int]]:
    """``name:low-high,...`` -> the data plan's per-family length ranges."""
    ranges = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, span = item.partition(":")
        low, _, high = span.partition("-")
        if not (low.strip().isdigit() and high.strip().isdigit()):
            raise BadInput(f"--family-lengths {text!r}: {item!r} is not NAME:LOW-HIGH in "
                           "tokens, e.g. niah_multikey:1024-2304")
        ranges[name] = (int(low), int(high))
    return ranges


def _stage_limits(stages: tuple[str, ...], gate: str, max_steps: str) -> dict:
    """``binding_gate``/``binding_max_steps``: a number, or a tuple with one per stage."""
    def parse(option, text, kind, ok, allowed):
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or not all(ok(v) for v in values) or len(values) not in (1, len(stages)):
            raise BadInput(f"{option} {text!r}: give {allowed}, one value or one per binding "
                           f"stage ({len(stages)}: {','.join(stages) or 'none'}), separated "
                           "by commas")
        return values[0] if len(values) == 1 else values
    return {"binding_gate": parse("--binding-gate", gate, float, lambda v: 0 < v <= 1,
                                  "accuracies in (0, 1]"),
            "binding_max_steps": parse("--binding-max-steps", max_steps, int, lambda v: v >= 1,
                                       "whole numbers of steps >= 1")}


@reference_app.command("train")
def train_cmd(
        out: Path = typer.Option(..., "--out", help="Directory for the checkpoint and the model."),
        steps: int = typer.Option(4800, help="Optimizer steps (the schedule's length)."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        seed: int = typer.Option(0, help="Seeds the weights and every batch."),
        size: str = typer.Option("reference", help="Model size: reference or smoke (tests)."),
        tokens_per_step: int = typer.Option(8192, help="Context tokens per batch."),
        min_len: int = typer.Option(96, help="Shortest context (tokens)."),
        short_len: int = typer.Option(256, help="Length cap while the curriculum holds."),
        max_len: int = typer.Option(2304, help="Longest context once the curriculum ends."),
        hold: float = typer.Option(0.3, help="Longest fraction of steps trained at --short-len "
                                   "or less (retrieval forms on short contexts first)."),
        gate_acc: float = typer.Option(0.8, help="Answer-digit accuracy that ends the hold "
                                       "early (0: always hold for --hold)."),
        repeat_spans: int = typer.Option(2, min=0, help="Spans of each training context copied "
                                         "later into it, loss on the copies (induction)."),
        ramp: float = typer.Option(0.5, help="Fraction of steps over which the length cap "
                                   "grows from --short-len to --max-len."),
        short_share: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of steps drawn "
                                          "no longer than --short-len whatever the cap."),
        family_lengths: str = typer.Option(
            "", help="A family's own length range in place of the step's draw, e.g. "
            "niah_multikey:1024-2304,niah_multivalue:96-1024 (the cap still applies)."),
        family_length_draw: str = typer.Option(
            "uniform", help="How --family-lengths ranges are drawn: uniform in tokens, or log "
            "(every doubling of length the same share, as the length bins)."),
        lr: float = typer.Option(3e-3, help="Peak learning rate."),
        lm_weight: float = typer.Option(0.5, help="Weight of the language-modelling loss on "
                                        "the haystack and questions (0: answers only)."),
        warmup: int = typer.Option(100, help="Linear warm-up steps."),
        workers: int = typer.Option(0, help="Data loader processes (0: in the training process)."),
        checkpoint_every: int = typer.Option(250, help="Steps between checkpoints."),
        log_every: int = typer.Option(25, help="Steps between log lines."),
        save_dtype: str = typer.Option("float16", help="dtype of the saved weights."),
        families: Optional[str] = typer.Option(
            None, help="Task families and their weights, e.g. niah_multikey:2,niah_multivalue:3 "
            "(unset: the card's default mix; a family left out is not trained)."),
        binding: str = typer.Option(
            "compact,ruler", help="Needle-only binding stages before the task families, in "
            "order (compact, ruler; 'none' for none): MODEL_CARD.md, 'Binding stages'."),
        binding_gate: str = typer.Option(
            "0.9", help="Accuracy of the answers' first digit groups that ends a binding "
            "stage: one value, or one per stage separated by commas (e.g. 0.97,0.9)."),
        binding_max_steps: str = typer.Option(
            "4000", help="Steps after which a binding stage ends even without binding: one "
            "value, or one per stage separated by commas."),
        init_from: Optional[Path] = typer.Option(
            None, help="Start from a finished run's weights (its directory) instead of fresh "
            "ones: the recipe's second, long-context run (MODEL_CARD.md)."),
        resume: bool = typer.Option(False, help="Continue from --out's checkpoint."),
        max_minutes: Optional[float] = typer.Option(
            None, help="Checkpoint and stop after this many minutes; rerun with --resume."),
) -> None:
    """Train the reference model into --out (deterministic given --seed)."""
    def step():
        # lazy: the reference model's training imports torch, which CLI start-up must not load
        from kv_transition.reference.dataset import DataPlan
        from kv_transition.reference.train import TrainConfig, train

        stages = _wordings(binding)
        mix = {"family_weights": _families(families)} if families else {}
        plan = DataPlan(seed=seed, steps=steps, tokens_per_step=tokens_per_step, min_len=min_len,
                        max_len=max_len, ramp_frac=ramp, short_len=short_len,
                        short_share=short_share, family_lengths=_family_lengths(family_lengths),
                        family_length_draw=family_length_draw,
                        hold_frac=hold, gate_acc=gate_acc, repeat_spans=repeat_spans,
                        binding=stages, **_stage_limits(stages, binding_gate,
                                                        binding_max_steps), **mix)
        cfg = TrainConfig(out=str(out), size=size, data=plan, lr=lr, warmup=warmup,
                          device=device, workers=workers, checkpoint_every=checkpoint_every,
                          log_every=log_every, save_dtype=save_dtype, lm_weight=lm_weight,
                          init_from=str(init_from) if init_from else None)
        summary = train(cfg, resume=resume, max_minutes=max_minutes, log=_say)
        if summary["done"]:
            _say(f"model saved to {out} ({summary['steps_done']} steps, "
                 f"{summary['train_seconds']} s on {summary['hardware']})")
    _guard(step)


def _eval_command(plan, policies: str, budgets: str) -> str:
    """The command that reproduces the table, rebuilt from the values actually used."""
    args = ["--model", plan.model, "--n", str(plan.n),
            "--lengths", ",".join(map(str, plan.lengths)), "--formats", ",".join(plan.formats),
            "--tasks", ",".join(plan.tasks)]
    if policies.strip():
        args += ["--policies", policies, "--budgets", budgets]
    args += ["--query-aware"] if plan.query_aware else []
    args += ["--max-tokens", str(plan.max_tokens)] if plan.max_tokens else []
    args += ["--show-misses", str(plan.show_misses)] if plan.show_misses else []
    args += ["--seed", str(plan.seed), "--device", plan.device, "--dtype", plan.dtype]
    return "kv-transition reference eval " + shlex.join(args)


@reference_app.command("eval")
def eval_cmd(
        model: str = typer.Option("builtin:reference", help="Model directory or builtin name."),
        n: int = typer.Option(100, min=1, help="Examples per task and length."),
        lengths: str = typer.Option("128,256,512,1024,2048", help="Context lengths (tokens)."),
        formats_: str = typer.Option("text,python,json", "--formats", help="Answer formats."),
        tasks: str = typer.Option(
            "niah_single,niah_multikey,niah_multivalue,niah_multiquery",
            help="Synthetic task families (the ones the reference model is trained on)."),
        policies: str = typer.Option(
            "", help="Compression policies to add, e.g. snapkv,streamingllm."),
        budgets: str = typer.Option("0.5,0.2", help="Budgets for --policies: fractions of the "
                                     "cache kept, or whole numbers of tokens kept (256)."),
        query_aware: bool = typer.Option(False, help="Compress context and question together."),
        seed: int = typer.Option(0, help="Seed of the generated examples."),
        device: str = typer.Option("cpu", help="cpu, cuda or auto."),
        dtype: str = typer.Option("float32", help="float32, bfloat16, float16 or auto."),
        max_tokens: Optional[int] = typer.Option(
            None, min=1, help="Cap on answer tokens (default: enough for each format)."),
        show_misses: int = typer.Option(0, min=0, help="Wrong answers to print per cell "
                                        "under the tables (gold, the model's answer, the needle "
                                        "depth), then each cell's misses by depth."),
        out: Optional[Path] = typer.Option(None, help="Write the Markdown table here."),
        card: Optional[Path] = typer.Option(None, help="Also put the table into this model card "
                                            "between its reference-eval markers."),
) -> None:
    """Full-cache (and optionally compressed) accuracy per task × length, as a Markdown table."""
    def step():
        settings = [Setting("full", 1.0)] + [Setting(p.strip(), b) for p in policies.split(",")
                                             if p.strip() for b in _budgets("--budgets", budgets)]
        plan = ev.EvalPlan(model=model, lengths=_ints("--lengths", lengths), n=n, seed=seed,
                           formats=[f.strip() for f in formats_.split(",") if f.strip()],
                           settings=settings, device=device, dtype=dtype, query_aware=query_aware,
                           max_tokens=max_tokens, show_misses=show_misses,
                           tasks=[t.strip() for t in tasks.split(",") if t.strip()])
        cells = ev.evaluate(plan, paths.models_dir(paths.home(_state["home"])), log=_say)
        table = ev.markdown(cells, plan, _eval_command(plan, policies, budgets),
                            hardware(ev.resolved_device(plan.device)))
        if out:
            out.write_text(table)
        if card:
            ev.update_card(card, table)
        typer.echo(table)
    _guard(step)
