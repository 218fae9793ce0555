"""Running `rebalancerd run` as a subprocess, the way systemd would: a real NOTIFY_SOCKET datagram
socket collecting the notify protocol, the control socket, /metrics over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rebalancerd.control.client import ControlError, request

REBALANCERD = str(Path(sys.executable).parent / "rebalancerd")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `pred` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # retried until the deadline
            last_exc = e
        time.sleep(interval)
    raise AssertionError(
        f"timed out waiting for {what}" + (f" (last error: {last_exc})" if last_exc else "")
    )


class NotifyListener:
    """A NOTIFY_SOCKET: records every datagram as a dict with a receive sequence number."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(
                line.split("=", 1) for line in data.decode().strip("\n").split("\n") if "=" in line
            )
            with self._lock:
                self.messages.append(fields)

    def snapshot(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.messages)

    def count(self, key: str, value: str | None = None, since: int = 0) -> int:
        return sum(
            1 for m in self.snapshot()[since:] if key in m and (value is None or m[key] == value)
        )

    def wait(self, key: str, value: str | None = None, since: int = 0, timeout: float = 30) -> int:
        """Wait for a message with key(=value) after index `since`; returns its index."""

        def find() -> int | None:
            for i, m in enumerate(self.snapshot()[since:], start=since):
                if key in m and (value is None or m[key] == value):
                    return i + 1
            return None

        idx: int = wait_for(find, timeout, f"notify {key}={value}")
        return idx - 1

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=2)


class DaemonProc:
    """One `rebalancerd run` subprocess with its config, state and sockets in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        watchdog_usec: int | None = 2_000_000,
        wrapper: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_port = free_port()
        base: dict[str, Any] = {
            "state_dir": str(workdir / "state"),
            "policy_dir": str(workdir / "policies"),
            "metrics": {"address": f"127.0.0.1:{self.metrics_port}"},
            "control": {"socket": str(workdir / "control.sock")},
            "log": {"format": "json", "level": "info"},
        }
        for k, v in config.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                base[k] = {**base[k], **v}
            else:
                base[k] = v
        self.config = base
        self.config_path = workdir / "rebalancerd.yaml"
        self.write_config()
        self.socket = str(workdir / "control.sock")
        self.log_path = workdir / "daemon.log"
        self.watchdog_usec = watchdog_usec
        self.wrapper = wrapper or []
        self.notify: NotifyListener | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self) -> None:
        npath = self.workdir / f"notify-{time.monotonic_ns()}.sock"
        if self.notify is not None:
            self.notify.close()
        self.notify = NotifyListener(npath)
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = str(npath)
        env.pop("WATCHDOG_PID", None)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        else:
            env.pop("WATCHDOG_USEC", None)
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.wrapper, REBALANCERD, "run", "--config", str(self.config_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        logf.close()

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.notify is not None
        try:
            self.notify.wait("READY", "1", timeout=timeout)
        except AssertionError:
            raise AssertionError(f"no READY=1; daemon log:\n{self.log_tail()}") from None

    # -- talking to it -------------------------------------------------------------------------
    def control(self, command: str, **args: Any) -> dict[str, Any]:
        return request(self.socket, command, timeout_s=30, **args)

    def status(self) -> dict[str, Any]:
        return self.control("status")

    def hosts(self) -> dict[str, dict[str, Any]]:
        return {h["name"]: h for h in self.status()["hosts"]}

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        for fam in text_string_to_metric_families(self.scrape()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit; log:\n{self.log_tail()}") from None

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log_events() if e.get("event") == name]

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if needed (only our own process)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.notify is not None:
            self.notify.close()
            self.notify = None


def control_ok(d: DaemonProc) -> bool:
    try:
        d.control("ping")
        return True
    except ControlError:
        return False


def promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: install the Debian package prometheus"
    return tool
