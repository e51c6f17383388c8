"""The command line: parse, call one pipeline function, print. Exit 2 on bad input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from kv_transition import paths, pipeline
from kv_transition.errors import BadInput
from kv_transition.settings import load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Measure what KV-cache compression costs across context length and budget.")
console = Console(stderr=True)
_state: dict[str, Optional[str]] = {"home": None}

ConfigOpt = typer.Option(..., "-c", "--config", help="Experiment config (YAML).")
SetOpt = typer.Option([], "--set", help="Override one config value: key.path=value (YAML value).")


@app.callback()
def main_options(home: Optional[str] = typer.Option(
        None, "--home", envvar=paths.HOME_ENV,
        help="Root for runs/ and data/ (default: the current directory).")) -> None:
    _state["home"] = home


def _experiment(config: Path, overrides: list[str]) -> pipeline.Experiment:
    return pipeline.Experiment(load_settings(config, overrides), paths.home(_state["home"]))


def _guard(step: Callable[[], None]) -> None:
    """Bad input is the user's to fix: one paragraph, no traceback, exit 2."""
    try:
        step()
    except BadInput as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


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
        console.print(f"report: {pipeline.report(exp)}")
    _guard(step)


def main() -> None:
    app(prog_name="kv-transition")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
