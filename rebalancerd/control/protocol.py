"""Wire format of the control API (shared by server and client).

One request per connection: the client writes one JSON object on one line,
``{"command": "status", "args": {...}}``; the server answers with one JSON line,
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "one line"}``, and closes.
"""

from __future__ import annotations

MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
REQUEST_TIMEOUT_S = 10.0

COMMANDS: tuple[str, ...] = ("status", "drain", "undrain", "snapshot", "reload", "ping")
