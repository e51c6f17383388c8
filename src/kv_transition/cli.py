"""The command line: parse, call one pipeline function, print. Exit 2 on bad input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from kv_transition import paths, pipeline
from kv_transition.console import console, escape
from kv_transition.console import guard as _guard
from kv_transition.console import state as _state
from kv_transition.quant_validate import Options, QuantOrderingError, parse_lengths, run_validation
from kv_transition.reference.commands import reference_app
from kv_transition.serve.server import serve_forever
from kv_transition.settings import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Measure what KV-cache compression costs across context length and budget.")

ConfigOpt = typer.Option(..., "-c", "--config", help="Experiment config (YAML).")
SetOpt = typer.Option([], "--set", help="Override one config value: key.path=value (YAML value).")


@app.callback()
def main_options(home: Optional[str] = typer.Option(
        None, "--home", envvar=paths.HOME_ENV,
        help="Root for runs/ and data/ (default: the current directory).")) -> None:
    _state["home"] = home


def _experiment(config: Path, overrides: list[str]) -> pipeline.Experiment:
    return pipeline.Experiment(load_settings(config, overrides), paths.home(_state["home"]))


@app.command()
def prepare(config: Path = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Build the length-binned manifest (datasets, examples, bins, manifest_entries)."""
    def step():
        exp = _experiment(config, set_)
        ds_id = pipeline.prepare(exp)
        console.print(f"prepared {ds_id} -> {exp.db_path}")
    _guard(step)


@app.command()
def run(config: Path = ConfigOpt, set_: list[str] = SetOpt,
        progress: bool = typer.Option(True, help="Show a progress bar.")) -> None:
    """Answer every manifest entry under every policy × budget; resumes where it stopped."""
    def step():
        n = pipeline.run(_experiment(config, set_), show_progress=progress)
        console.print(f"answered {n} requests")
    _guard(step)


@app.command()
def score(config: Path = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Score answers (EM/F1, RULER match, LongBench metrics) and classify failures."""
    def step():
        counts = pipeline.score(_experiment(config, set_))
        console.print(f"scored {counts['scored']} responses, {counts['failures']} failures")
    _guard(step)


@app.command()
def analyze(config: Path = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Per-bin statistics with bootstrap CIs, paired deltas, transition zones, plots."""
    def step():
        exp = _experiment(config, set_)
        pipeline.analyze(exp)
        console.print(f"analysis written to {exp.run_dir}")
    _guard(step)


@app.command()
def report(config: Path = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """Write report.md from the database."""
    def step():
        console.print(f"report: {pipeline.report(_experiment(config, set_))}")
    _guard(step)


@app.command(name="all")
def all_(config: Path = ConfigOpt, set_: list[str] = SetOpt,
         progress: bool = typer.Option(True, help="Show a progress bar.")) -> None:
    """prepare → run → score → analyze → report, skipping what is already done."""
    def step():
        exp = _experiment(config, set_)
        pipeline.prepare(exp)
        pipeline.run(exp, show_progress=progress)
        pipeline.score(exp)
        pipeline.analyze(exp)
        if exp.settings.analysis.refine:
            from kv_transition.refine import refine as refine_experiment  # lazy: as below

            _print_refine(refine_experiment(exp, show_progress=progress))
        console.print(f"report: {pipeline.report(exp)}")
    _guard(step)


def _print_refine(result) -> None:
    for i, grown in enumerate(result.rounds, 1):
        sizes = ", ".join(f"bin {b}: {a} -> {z}" for b, (a, z) in grown.items())
        console.print(f"refine round {i}: {sizes}")
    console.print(f"refine stopped: {result.stop}")


@app.command()
def refine(config: Path = ConfigOpt, set_: list[str] = SetOpt,
           progress: bool = typer.Option(True, help="Show a progress bar.")) -> None:
    """Add examples only to bins whose transition verdict is inconclusive, then reanalyze."""
    # lazy: refine's analysis imports scipy (about 2 s), which no other command start needs
    from kv_transition.refine import refine as refine_experiment

    def step():
        exp = _experiment(config, set_)
        _print_refine(refine_experiment(exp, show_progress=progress))
        console.print(f"report: {pipeline.report(exp)}")
    _guard(step)


@app.command(name="quant-validate")
def quant_validate(
        config: Optional[Path] = typer.Option(
            None, "-c", "--config", help="Experiment config: the model, kv.quant, and the "
            "database the results go to (optional with --memory-only)."),
        set_: list[str] = SetOpt,
        memory_only: bool = typer.Option(False, "--memory-only",
                                         help="No model: payload and true ratios per policy."),
        head_dim: Optional[int] = typer.Option(None, "--head-dim",
                                               help="Channels per head (memory-only: 128)."),
        group_size: Optional[int] = typer.Option(None, "--group-size",
                                                 help="Override kv.quant.group_size."),
        residual: Optional[int] = typer.Option(None, "--residual",
                                               help="Override kv.quant.residual_length."),
        lengths: Optional[str] = typer.Option(None, "--lengths", help="Context lengths, e.g. "
                                              "512,4096,32768 (the default with --memory-only).")
) -> None:
    """Check quantized caches: memory ratios, reconstruction and attention error per layer."""
    def step():
        exp = _experiment(config, set_) if config else None
        opts = Options(memory_only, head_dim, group_size, residual, parse_lengths(lengths))
        try:
            result = run_validation(exp, opts)
        except QuantOrderingError as exc:  # a bug, not bad input: exit 1, results kept
            typer.echo(exc.validation.markdown)
            console.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        typer.echo(result.markdown)
        if result.path:
            console.print(f"written to {result.path} and the quant_validation table")
    _guard(step)


# `kv-transition reference train|eval`: the bundled reference model (reference/commands.py)
app.add_typer(reference_app, name="reference")


@app.command()
def novelty(config: Path = ConfigOpt, set_: list[str] = SetOpt) -> None:
    """KV novelty probes: capture K/V while generating, novelty statistics, policy link."""
    from kv_transition.novelty import run_novelty  # lazy: imports torch and transformers

    def step():
        out = run_novelty(_experiment(config, set_))
        console.print(f"novelty: {len(out.captured)} prompt(s) probed, {len(out.skipped)} "
                      f"already done -> {out.report}")
    _guard(step)


@app.command()
def serve(config: Path = ConfigOpt, set_: list[str] = SetOpt,
          host: Optional[str] = typer.Option(None, "--host", help="Bind address (default "
                                             "serve.host, 127.0.0.1)."),
          port: Optional[int] = typer.Option(None, "--port", help="Port (default serve.port)."),
          policy: Optional[str] = typer.Option(None, "--policy", help="Apply this policy to "
                                               "every request (default: kv_policy per request)."),
          budget: Optional[float] = typer.Option(None, "--budget", help="Apply this budget to "
                                                 "every request (default: kv_budget per request)."),
          api_key_env: Optional[str] = typer.Option(
              None, "--api-key-env", help="Require the bearer token held by this environment "
              "variable.")) -> None:
    """Serve the config's model over an OpenAI-compatible API, with KV compression applied."""
    def step():
        serve_forever(load_settings(config, set_), paths.home(_state["home"]),
                      announce=lambda line: console.print(line, soft_wrap=True),
                      host=host, port=port, policy=policy,
                      budget=budget, api_key_env=api_key_env)
    _guard(step)


def main() -> None:
    app(prog_name="kv-transition")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
