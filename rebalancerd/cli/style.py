"""Colour for terminal output: only on a terminal, never with NO_COLOR set (no-color.org) or
TERM=dumb. One rule for the CLI and the console log renderer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TextIO

RED = "31"
YELLOW = "33"
GREEN = "32"
BOLD = "1"


def use_color(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether to colour what goes to `stream`."""
    e = os.environ if env is None else env
    if "NO_COLOR" in e or e.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint(text: str, code: str, on: bool) -> str:
    """`text` in SGR colour `code` if `on`, else unchanged."""
    return f"\x1b[{code}m{text}\x1b[0m" if on else text
