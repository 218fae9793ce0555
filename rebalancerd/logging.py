"""Logging: structlog, JSON lines to stdout (journald) or a readable console format on a TTY.

When stdout is the journal (systemd sets ``JOURNAL_STREAM=<device>:<inode>`` of the stream it
connected, and that matches stdout), every line starts with sd-daemon's priority prefix ``<N>``
(3 error, 4 warning, 6 info, 7 debug), which journald strips and files as the entry's priority
(``SyslogLevelPrefix=`` defaults to true): ``journalctl -p err`` then finds ``vm_lost``.

Event names are stable snake_case identifiers (``migration_started``, ``policy_reloaded``, ...);
lines about a host, a VM or a migration carry ``host=``, ``vm=`` and ``migration=`` keys, bound by
the code emitting them. Standard-library ``logging`` records (libraries) go through the same
renderer.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog

Format = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def journal_priority(levelno: int) -> int:
    """syslog priority of a logging level (levels between two take the more severe one)."""
    for lvl in sorted(_JOURNAL_PRIORITY, reverse=True):
        if levelno >= lvl:
            return _JOURNAL_PRIORITY[lvl]
    return 7


def stream_is_journal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd named in ``JOURNAL_STREAM``."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (AttributeError, ValueError, OSError):
        return False


class _JournalPrefixFormatter(logging.Formatter):
    """Prefixes each formatted line with ``<N>``, the record's syslog priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{journal_priority(record.levelno)}>{self.inner.format(record)}"


def _resolve_format(fmt: Format, stream: TextIO) -> Literal["json", "console"]:
    if fmt != "auto":
        return fmt
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def configure(
    level: str = "info",
    fmt: Format = "auto",
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Configure structlog and stdlib logging; returns the format chosen ("json"/"console").

    ``env`` (default ``os.environ``) is where ``JOURNAL_STREAM`` is looked up."""
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
    handler.setFormatter(
        _JournalPrefixFormatter(formatter) if stream_is_journal(out, env) else formatter
    )
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
    from rebalancerd.cli.style import use_color

    return use_color(stream)


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
