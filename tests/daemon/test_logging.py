"""structlog setup: JSON lines when not a TTY (journald), console format on a TTY."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from rebalancerd import logging as rlog


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    structlog.reset_defaults()


def test_json_lines_with_stable_keys() -> None:
    out = io.StringIO()
    assert rlog.configure("info", "auto", out) == "json"
    structlog.get_logger("rebalancerd.executor").info(
        "migration_started", vm="web-1", source="hv1", target="hv2", migration_id="m-1"
    )
    logging.getLogger("some.library").warning("plain %s", "record")
    structlog.get_logger("x").debug("hidden_below_level")
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("x").exception("cycle_failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["event"] == "migration_started" and first["level"] == "info"
    assert first["vm"] == "web-1" and first["migration_id"] == "m-1"
    assert first["logger"] == "rebalancerd.executor" and first["ts"].endswith("Z")
    # a library's line gets an event name like ours and keeps its text
    assert lines[1]["event"] == "library_log" and lines[1]["level"] == "warning"
    assert lines[1]["message"] == "plain record" and lines[1]["logger"] == "some.library"
    assert "message" not in first
    assert "ValueError: boom" in lines[2]["exception"]


def test_console_on_a_tty() -> None:
    out = _Tty()
    assert rlog.configure("debug", "auto", out) == "console"
    structlog.get_logger("x").info("daemon_ready", socket="/run/x")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    assert "daemon_ready" in text and "socket=/run/x" in text
    with pytest.raises(ValueError):
        json.loads(text)


def test_forced_format_and_bad_level() -> None:
    assert rlog.configure("info", "json", _Tty()) == "json"
    with pytest.raises(ValueError, match="log level"):
        rlog.configure("loud", "json", io.StringIO())
