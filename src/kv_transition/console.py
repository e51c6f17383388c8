"""What every command shares: the stderr console, the bad-input guard and the global options.

Kept apart from ``cli.py`` so that command groups in other packages (``reference/commands.py``)
can use them without importing the CLI that imports them.
"""

from __future__ import annotations

from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages name config lists and extras in brackets

from kv_transition.errors import BadInput

console = Console(stderr=True)
state: dict[str, Optional[str]] = {"home": None}  # set by the CLI's --home option


def guard(step: Callable[[], None]) -> None:
    """Bad input is the user's to fix: one paragraph, no traceback, exit 2."""
    try:
        step()
    except BadInput as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def say(message: str) -> None:
    """A plain line on stderr (no markup: messages may hold brackets)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)
