"""The agent logs like the daemon (JSON lines, its own log_level) and reports a lasting problem
once when it starts and once when it ends, not every interval."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from rebalancerd import logging as rlog
from rebalancerd.adapters.libvirt_stats import LibvirtUnavailable
from rebalancerd.adapters.mqtt import BrokerSettings
from rebalancerd.agent import Agent, AgentConfig, AgentConfigError, load_agent_config
from tests.fixtures.mqtt import BrokerFactory

BROKEN_LIBVIRT = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    rlog.configure("debug", "json", out, env={})
    yield out
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    structlog.reset_defaults()


def _events(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


class FlakyLibvirt:
    """Unreachable for the first ``down`` reads, then fine."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.reads = 0
        self.skipped_names = 0

    def read(self) -> list[dict[str, Any]]:
        self.reads += 1
        if self.reads <= self.down:
            raise LibvirtUnavailable("connection refused")
        return []

    def close(self) -> None:
        return None


async def test_libvirt_outage_is_logged_once_then_its_end(log_lines: io.StringIO) -> None:
    agent = Agent(AgentConfig(host="h1", libvirt_uri="test:///default"))
    agent.libvirt = FlakyLibvirt(down=3)  # type: ignore[assignment]
    reports = [await agent.sample() for _ in range(6)]
    assert [r["libvirt_ok"] for r in reports] == [False, False, False, True, True, True]
    events = [e for e in _events(log_lines) if e["event"].startswith("agent_libvirt")]
    assert [(e["event"], e["level"]) for e in events] == [
        ("agent_libvirt_unavailable", "warning"),
        ("agent_libvirt_reachable_again", "info"),
    ]
    assert events[0]["error"] == "connection refused"
    assert events[1]["failures"] == 3


async def test_a_changed_problem_is_logged_again(log_lines: io.StringIO) -> None:
    agent = Agent(AgentConfig(host="h1", libvirt_uri="test:///default"))
    flaky = FlakyLibvirt(down=10)
    agent.libvirt = flaky  # type: ignore[assignment]
    await agent.sample()
    await agent.sample()

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("odd reply")

    flaky.read = broken  # type: ignore[method-assign]
    await agent.sample()
    await agent.sample()
    events = [e["event"] for e in _events(log_lines) if e["event"].startswith("agent_libvirt")]
    assert events == ["agent_libvirt_unavailable", "agent_libvirt_error"]


@pytest.mark.mqtt
@pytest.mark.timeout(60)
async def test_broker_outage_is_logged_once_then_its_end(
    log_lines: io.StringIO, mosquitto_factory: BrokerFactory
) -> None:
    broker = mosquitto_factory(start=False)
    cfg = AgentConfig(
        host="h1",
        interval_s=0.1,
        libvirt_uri="test:///default",
        broker=BrokerSettings(url=broker.url),
    )
    agent = Agent(cfg)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(20):
            while sum(e["event"] == "agent_broker_retry" for e in _events(log_lines)) < 3:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(broker.start)
        async with asyncio.timeout(30):
            while agent.published < 2:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    events = [e["event"] for e in _events(log_lines)]
    assert events.count("agent_broker_unavailable") == 1
    assert events.count("agent_broker_reachable_again") == 1
    assert events.index("agent_broker_unavailable") < events.index("agent_broker_reachable_again")
    again = next(e for e in _events(log_lines) if e["event"] == "agent_broker_reachable_again")
    assert again["failures"] >= 3 and again["level"] == "info"


def test_agent_cli_logs_json_lines_to_stderr_with_once(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"host: h1\ninterval_s: 0.05\nlibvirt_uri: '{BROKEN_LIBVIRT}'\nlog_level: info\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    r = subprocess.run(
        [sys.executable, "-m", "rebalancerd.cli.main", "agent", "--config", str(cfg), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["libvirt_ok"] is False
    lines = [json.loads(line) for line in r.stderr.splitlines()]
    # two samples, both without libvirt: one warning, as a JSON line like the daemon's
    assert [(e["event"], e["level"]) for e in lines] == [("agent_libvirt_unavailable", "warning")]
    assert lines[0]["logger"] == "rebalancerd.agent" and lines[0]["ts"].endswith("Z")


def test_agent_log_settings_are_validated(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("host: h1\nlog_level: warning\nlog_format: console\n")
    cfg = load_agent_config(good)
    assert (cfg.log_level, cfg.log_format) == ("warning", "console")
    assert load_agent_config(_write(tmp_path, "host: h1\n")).log_level == "info"
    with pytest.raises(AgentConfigError, match="log_level"):
        load_agent_config(_write(tmp_path, "host: h1\nlog_level: loud\n"))


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / f"c{abs(hash(text))}.yaml"
    p.write_text(text)
    return p
