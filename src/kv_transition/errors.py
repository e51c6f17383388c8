"""Errors the CLI turns into exit codes.

``BadInput`` is the user's to fix (config, data file, argument, unreachable endpoint): exit 2
with a one-paragraph message naming the file/field/line and what is allowed. Anything else is
a bug or an environment failure: exit 1.
"""

from __future__ import annotations


class BadInput(Exception):
    """Bad config, data, argument or endpoint; the message says where and what is allowed."""


class DataError(BadInput):
    """A malformed data file; carries the file and line."""

    def __init__(self, path: str, line: int | None, message: str):
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
