"""Logging: structlog, JSON lines to stdout (journald) or a readable console format on a TTY.

Event names are stable snake_case identifiers (``migration_started``, ``policy_reloaded``, ...);
lines about a host, a VM or a migration carry ``host=``, ``vm=`` and ``migration=`` keys, bound by
the code emitting them. Standard-library ``logging`` records (libraries) go through the same
renderer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

Format = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _resolve_format(fmt: Format, stream: TextIO) -> Literal["json", "console"]:
    if fmt != "auto":
        return fmt
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def configure(level: str = "info", fmt: Format = "auto", stream: TextIO | None = None) -> str:
    """Configure structlog and stdlib logging; returns the format chosen ("json"/"console")."""
    out = stream if stream is not None else sys.stdout
    chosen = _resolve_format(fmt, out)
    lvl = _LEVELS.get(level.lower())
    if lvl is None:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(_LEVELS)}")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    renderer: Any
    if chosen == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_colors(out))

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _library_event],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_rebalancerd", False):
            root.removeHandler(h)
    handler._rebalancerd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(lvl)
    # Chatty libraries stay at warning unless we debug.
    for name in ("aiomqtt", "asyncio", "libvirt"):
        logging.getLogger(name).setLevel(lvl if lvl <= logging.DEBUG else logging.WARNING)
    return chosen


def _colors(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _library_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A library's stdlib log line (aiomqtt, asyncio, libvirt...) gets an event name like ours,
    `library_log`, and keeps its text under `message`: alerts and log queries can match on
    event names without parsing free text."""
    event_dict["message"] = str(event_dict.get("event", ""))
    event_dict["event"] = "library_log"
    return event_dict


def get_logger(name: str = "rebalancerd", **bound: Any) -> Any:
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
