"""The notify protocol against a real NOTIFY_SOCKET datagram socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rebalancerd.adapters.systemd import (
    NullNotifier,
    SystemdNotifier,
    from_env,
    watchdog_interval_s,
)


def _fields(datagram: bytes) -> dict[str, str]:
    lines = datagram.decode().strip("\n").split("\n")
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def test_messages_on_a_real_socket(notify_socket: tuple[str, socket.socket]) -> None:
    path, s = notify_socket
    n = from_env({"NOTIFY_SOCKET": path})
    assert isinstance(n, SystemdNotifier)
    n.ready()
    assert _fields(s.recv(4096)) == {"READY": "1"}
    n.status("planning: 3 hosts\nsecond line")
    assert _fields(s.recv(4096)) == {"STATUS": "planning: 3 hosts second line"}
    n.watchdog()
    assert _fields(s.recv(4096)) == {"WATCHDOG": "1"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    f = _fields(s.recv(4096))
    assert f["RELOADING"] == "1"
    assert before <= int(f["MONOTONIC_USEC"]) <= after
    n.reloaded()
    assert _fields(s.recv(4096)) == {"READY": "1"}
    n.stopping()
    assert _fields(s.recv(4096)) == {"STOPPING": "1"}
    assert n.sent == 6
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"rebalancerd-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(2)
    try:
        n = from_env({"NOTIFY_SOCKET": "@" + name})
        n.ready()
        assert _fields(s.recv(4096)) == {"READY": "1"}
    finally:
        s.close()


def test_a_vanished_manager_never_raises(tmp_path: Path) -> None:
    n = SystemdNotifier(str(tmp_path / "gone.sock"))
    n.ready()
    n.watchdog()
    assert n.sent == 0


def test_no_socket_means_null_notifier() -> None:
    assert isinstance(from_env({}), NullNotifier)
    assert isinstance(from_env({"NOTIFY_SOCKET": "relative/path"}), NullNotifier)


def test_watchdog_interval() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(mine) == 2.0
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval_s(other) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None


def test_a_stalled_manager_never_blocks(tmp_path: Path) -> None:
    """The receiver never reads: its queue fills up; sending must drop, not block."""
    path = str(tmp_path / "stalled.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    try:
        n = SystemdNotifier(path)
        for _ in range(5000):
            n.watchdog()  # would hang here with a blocking socket
        assert 0 < n.sent < 5000
        assert _fields(s.recv(4096)) == {"WATCHDOG": "1"}
    finally:
        s.close()
