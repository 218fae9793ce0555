"""systemd's service notification protocol, spoken directly (no libsystemd).

A notification is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). See sd_notify(3).

- ``READY=1`` once the daemon serves; ``STATUS=...`` human status lines;
- ``WATCHDOG=1`` keep-alives: the daemon sends them only while its control loop is healthy (see
  ``daemon/health.py``), never from a free-running timer, so a wedged loop gets the service
  restarted;
- ``RELOADING=1`` + ``MONOTONIC_USEC=`` when a reload starts, ``READY=1`` when it ends;
- ``STOPPING=1`` when shutting down.

Sending never raises and never blocks (the socket is non-blocking: if the manager's queue is
full the datagram is dropped and logged): a service manager that went away or stalls must not
take the daemon down or freeze its event loop.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("rebalancerd.systemd")

MAX_STATUS_LEN = 1024


def _address(raw: str) -> str | bytes:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    return raw


class SystemdNotifier:
    """ServiceNotifier over $NOTIFY_SOCKET."""

    def __init__(self, socket_path: str) -> None:
        if not socket_path or not (socket_path.startswith("/") or socket_path.startswith("@")):
            raise ValueError(f"NOTIFY_SOCKET {socket_path!r}: must be an absolute path or @name")
        self.socket_path = socket_path
        self._addr = _address(socket_path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Never block the event loop: a manager whose queue is full loses this datagram.
        self._sock.setblocking(False)
        self._failed = False
        self.sent = 0

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram with the given fields; True if the manager got it."""
        lines = []
        for k, v in fields.items():
            text = str(v).replace("\n", " ")
            lines.append(f"{k}={text}")
        payload = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            self._sock.sendto(payload, self._addr)
        except OSError as e:
            if not self._failed:
                log.warning("systemd_notify_failed", socket=self.socket_path, error=str(e))
            self._failed = True
            return False
        self._failed = False
        self.sent += 1
        return True

    # -- ServiceNotifier ---------------------------------------------------------------------
    def ready(self) -> None:
        self.notify(READY="1")

    def status(self, text: str) -> None:
        self.notify(STATUS=text[:MAX_STATUS_LEN])

    def watchdog(self) -> None:
        self.notify(WATCHDOG="1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(RELOADING="1", MONOTONIC_USEC=str(usec))

    def reloaded(self) -> None:
        self.notify(READY="1")

    def stopping(self) -> None:
        self.notify(STOPPING="1")

    def close(self) -> None:
        self._sock.close()


class NullNotifier:
    """When not run by systemd (no $NOTIFY_SOCKET)."""

    def ready(self) -> None:
        return None

    def status(self, text: str) -> None:
        return None

    def watchdog(self) -> None:
        return None

    def reloading(self) -> None:
        return None

    def reloaded(self) -> None:
        return None

    def stopping(self) -> None:
        return None

    def close(self) -> None:
        return None


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd expects us to honour (WatchdogSec=), or None.

    Honoured only when ``WATCHDOG_PID`` is unset or names this process (sd_watchdog_enabled(3)).
    """
    e = os.environ if env is None else env
    usec = e.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = e.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def from_env(env: Mapping[str, str] | None = None) -> SystemdNotifier | NullNotifier:
    e = os.environ if env is None else env
    path = e.get("NOTIFY_SOCKET", "")
    if not path:
        return NullNotifier()
    try:
        return SystemdNotifier(path)
    except ValueError as err:
        log.warning("systemd_notify_socket_invalid", error=str(err))
        return NullNotifier()
