"""Located policy issues: ``file:line:column: message`` (1-based line and column)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem found in a policy file, with where it is."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


class PolicyError(Exception):
    """One or more issues in policy files; ``str()`` is one ``file:line:col: msg`` per line."""

    def __init__(self, problems: Iterable[PolicyIssue]) -> None:
        self.problems: list[PolicyIssue] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def one_line(self) -> str:
        n = len(self.problems)
        first = str(self.problems[0]) if self.problems else "invalid policy"
        return first if n <= 1 else f"{first} (and {n - 1} more problems)"


def mark_position(mark: yaml.Mark | None) -> tuple[int, int]:
    """1-based (line, column) of a YAML mark; the file's start when unknown."""
    if mark is None:
        return 1, 1
    return mark.line + 1, mark.column + 1


def text_position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of a character index into ``text`` (clamped to the text)."""
    index = max(0, min(index, len(text)))
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


def short_repr(v: Any, n: int = 40) -> str:
    """``repr(v)`` cut to ``n`` characters, for quoting user input in a message."""
    s = repr(v)
    return s if len(s) <= n else s[: n - 4] + "...'"
