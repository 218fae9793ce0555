"""structlog setup: JSON lines when not a TTY (journald), console format on a TTY."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

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


def _journal_env(stream: io.TextIOBase) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_stream_gets_syslog_priority_prefixes(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w+") as out:
        assert rlog.configure("debug", "auto", out, env=_journal_env(out)) == "json"
        log = structlog.get_logger("rebalancerd.executor")
        log.error("vm_lost", vm="web-1")
        log.warning("migration_failed", vm="web-2")
        log.info("migration_started", vm="web-3")
        log.debug("plan_ready")
        logging.getLogger("aiomqtt").error("library %s", "trouble")
        out.flush()
        out.seek(0)
        lines = out.read().splitlines()
    prefixes = [line[:3] for line in lines]
    assert prefixes == ["<3>", "<4>", "<6>", "<7>", "<3>"]
    events = [json.loads(line[3:])["event"] for line in lines]
    assert events == [
        "vm_lost",
        "migration_failed",
        "migration_started",
        "plan_ready",
        "library_log",
    ]


def test_no_prefix_when_stdout_is_not_the_journal(tmp_path: Path) -> None:
    with (tmp_path / "other").open("w+") as journal, (tmp_path / "log").open("w+") as out:
        # JOURNAL_STREAM names another file (stdout redirected away from the journal), or is
        # missing or garbage: plain JSON lines
        for env in (_journal_env(journal), {}, {"JOURNAL_STREAM": "x:y"}):
            rlog.configure("info", "auto", out, env=env)
            structlog.get_logger("x").error("vm_lost")
        out.flush()
        out.seek(0)
        lines = out.read().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["event"] == "vm_lost" for line in lines)


def test_journal_priority_of_levels() -> None:
    assert rlog.journal_priority(logging.CRITICAL) == 2
    assert rlog.journal_priority(logging.ERROR) == 3
    assert rlog.journal_priority(logging.WARNING + 5) == 4
    assert rlog.journal_priority(logging.INFO) == 6
    assert rlog.journal_priority(logging.DEBUG) == 7
    assert rlog.journal_priority(1) == 7
