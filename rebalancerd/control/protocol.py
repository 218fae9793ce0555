"""Wire format of the control API (shared by server and client).

One request per connection: the client writes one JSON object on one line,
``{"command": "status", "args": {...}}``; the server answers with one JSON line,
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "one line"}``, and closes.
"""

from __future__ import annotations

import math
from typing import Any

MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
REQUEST_TIMEOUT_S = 10.0
MAX_REQUEST_DEPTH = 32
"""Deepest nesting of objects/arrays a request may have (a real one has 2)."""
LISTEN_BACKLOG = 1024
"""Connections the kernel queues before the server accepts them (a burst of CLI calls)."""

COMMANDS: tuple[str, ...] = ("status", "drain", "undrain", "snapshot", "reload", "ping")


def nesting_depth(text: str | bytes, stop_at: int = MAX_REQUEST_DEPTH + 1) -> int:
    """How deep objects and arrays nest in a JSON text (brackets inside strings not counted);
    stops counting once `stop_at` is reached, so that a hostile request costs one linear scan and
    never reaches the JSON parser's recursion."""
    data = text.encode() if isinstance(text, str) else text
    depth = deepest = 0
    in_string = escaped = False
    for c in data:
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # quote
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x7B, 0x5B):  # { [
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest >= stop_at:
                    return deepest
        elif c in (0x7D, 0x5D):  # } ]
            depth -= 1
    return deepest


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, inf) replaced by None, so that it can be sent as
    strict JSON (``allow_nan=False``) whatever a value turned out to be."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
