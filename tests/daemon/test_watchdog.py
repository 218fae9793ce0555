"""WATCHDOG=1 follows the control loop's health, not a timer: a wedged planner stops the
keep-alives (systemd would restart the service), a recovered loop resumes them."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

from rebalancerd.adapters.systemd import SystemdNotifier
from rebalancerd.daemon.config import parse
from rebalancerd.daemon.daemon import Daemon


def _count(msgs: list[bytes], field: str) -> int:
    return sum(1 for m in msgs if field.encode() in m.split(b"\n"))


async def _until(pred: Any, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_watchdog_stops_while_the_loop_is_wedged(tmp_path: Path) -> None:
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(str(tmp_path / "notify.sock"))
    nsock.setblocking(False)
    msgs: list[bytes] = []

    def drain() -> list[bytes]:
        while True:
            try:
                msgs.append(nsock.recv(4096))
            except BlockingIOError:
                return msgs

    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "apiVersion: rebalancerd/v1\nkind: Policy\nmode: balance\n"
    )
    cfg = parse(
        {
            "simulate": True,
            "sim": {"hosts": 3, "vms_per_host": 2},
            "state_dir": str(tmp_path / "state"),
            "policy_dir": str(tmp_path / "policies"),
            "metrics": {"enabled": False},
            "control": {"socket": str(tmp_path / "ctl.sock")},
            "intervals": {"plan_s": 0.2, "watchdog_grace_cycles": 1},
            "planner": {"time_limit_s": 0.1},
        }
    )
    daemon = Daemon(
        cfg,
        notifier=SystemdNotifier(str(tmp_path / "notify.sock")),
        env={"WATCHDOG_USEC": "100000"},
    )
    runner = asyncio.create_task(daemon.run())
    release = threading.Event()
    try:
        await _until(lambda: _count(drain(), "WATCHDOG=1") >= 3, 30, "healthy keep-alives")
        assert daemon.health() == (True, "ok")

        loop = daemon.parts.loop
        real = loop.planner()

        def wedged(*a: Any, **kw: Any) -> Any:
            release.wait(60)
            return real(*a, **kw)

        loop._planner = wedged
        await _until(
            lambda: bool(drain()) and not daemon.watchdog.ok, 30, "loop declared unhealthy"
        )
        assert daemon.health()[0] is False
        await asyncio.sleep(0.1)
        before = _count(drain(), "WATCHDOG=1")
        ticks = daemon.watchdog.ticks
        await _until(
            lambda: bool(drain()) and daemon.watchdog.ticks >= ticks + 5, 30, "watchdog ticks"
        )
        assert _count(drain(), "WATCHDOG=1") == before, "keep-alive sent while wedged"
        assert any(m.startswith(b"STATUS=unhealthy") for m in drain())

        loop._planner = real
        release.set()
        await _until(lambda: _count(drain(), "WATCHDOG=1") > before, 30, "keep-alives resume")
        daemon.request_stop()
        assert await asyncio.wait_for(runner, 30) == 0
        assert _count(drain(), "STOPPING=1") == 1
    finally:
        release.set()
        daemon.request_stop()
        if not runner.done():
            await asyncio.wait_for(runner, 30)
        nsock.close()
