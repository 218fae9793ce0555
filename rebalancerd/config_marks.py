"""Where things are in a YAML config file, so every config problem is reported at once as
``file:line:col: message`` (like policy files). Used by the daemon config and the agent config;
the values themselves are still read with ``yaml.safe_load`` (their meaning does not change).

Pure: it parses text it is given (no file access)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import ValidationError

MAX_PROBLEMS = 50

Path_ = tuple[str | int, ...]


class Positions:
    """1-based (line, column) of each value, and of the key naming it, by path."""

    def __init__(self, text: str) -> None:
        self.value: dict[Path_, tuple[int, int]] = {}
        self.key: dict[Path_, tuple[int, int]] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except (yaml.YAMLError, RecursionError):
            return
        if node is not None:
            self._walk(node, (), 0)

    def _walk(self, node: yaml.Node, path: Path_, depth: int) -> None:
        if depth > 64 or len(self.value) > 50_000:
            return
        self.value[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    sub = (*path, str(k.value))
                    self.key[sub] = (k.start_mark.line + 1, k.start_mark.column + 1)
                    self._walk(v, sub, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, (*path, i), depth + 1)

    def at(self, path: Sequence[Any], prefer_key: bool = False) -> tuple[int, int]:
        """Where `path` (or its nearest known parent) starts; the file's start if unknown."""
        p = tuple(str(x) if not isinstance(x, int) else x for x in path)
        while True:
            if prefer_key and p in self.key:
                return self.key[p]
            if p in self.value:
                return self.value[p]
            if not p:
                return 1, 1
            p = p[:-1]


def yaml_error_line(source: str, e: yaml.YAMLError) -> str:
    """One ``file:line:col: invalid YAML: ...`` line for a YAML syntax error."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0] or type(e).__name__
    return f"{source}:{line}:{col}: invalid YAML: {problem}"


def validation_lines(e: ValidationError, source: str, pos: Positions) -> list[str]:
    """Every pydantic problem (up to MAX_PROBLEMS) as ``file:line:col: dotted.key: message``."""
    out: list[str] = []
    for err in e.errors(include_url=False)[:MAX_PROBLEMS]:
        loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            line, col = pos.at(loc, prefer_key=True)
            msg = "unknown key"
        elif err["type"] == "missing":
            line, col = pos.at(loc[:-1])
            msg = "required key missing"
        else:
            line, col = pos.at(loc)
        out.append(f"{source}:{line}:{col}: {dotted}: {msg}")
    if e.error_count() > MAX_PROBLEMS:
        out.append(f"{source}:1:1: (and {e.error_count() - MAX_PROBLEMS} more problems)")
    return out
