"""Redfish (against a local server speaking the Redfish subset), Wake-on-LAN (received on
127.0.0.1), command hooks (real programs), and the one-line config errors."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rebalancerd.adapters.power_config import (
    PowerConfigError,
    build_router,
    driver_for,
    parse_power_spec,
)
from rebalancerd.adapters.power_wol import magic_packet
from rebalancerd.ports import PowerError, PowerState


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- Redfish ---------------------------------------------------------------------------------


class FakeBmc:
    def __init__(self) -> None:
        self.state = "On"
        self.resets: list[str] = []
        self.garbage = False


def make_handler(bmc: FakeBmc) -> type[BaseHTTPRequestHandler]:
    good = "Basic " + base64.b64encode(b"admin:pw").decode()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            return

        def _send(self, code: int, body: Any) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _auth(self) -> bool:
            if self.headers.get("Authorization") != good:
                self._send(401, {"error": "unauthorized"})
                return False
            return True

        def do_GET(self) -> None:
            if not self._auth():
                return
            if self.path == "/redfish/v1/Systems":
                self._send(200, {"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})
            elif self.path == "/redfish/v1/Systems/1":
                self._send(200, b"<html>" if bmc.garbage else {"PowerState": bmc.state})
            else:
                self._send(404, {})

        def do_POST(self) -> None:
            if not self._auth():
                return
            n = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(n))
            if self.path != "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset":
                self._send(404, {})
                return
            kind = body.get("ResetType")
            bmc.resets.append(kind)
            bmc.state = "On" if kind == "On" else "Off"
            self._send(204, b"")

    return H


@pytest.fixture
def redfish(tmp_path: Path) -> Iterator[tuple[FakeBmc, dict[str, Any]]]:
    bmc = FakeBmc()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(bmc))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    spec = {
        "driver": "redfish",
        "url": f"http://127.0.0.1:{srv.server_address[1]}",
        "username": "admin",
        "password_file": str(pw),
        "timeout_s": 3.0,
    }
    yield bmc, spec
    srv.shutdown()
    srv.server_close()


def test_redfish_reset_and_power_state(redfish: tuple[FakeBmc, dict[str, Any]]) -> None:
    bmc, spec = redfish
    d = driver_for("hv1", parse_power_spec("hv1", spec))
    assert run(d.power_state("hv1")) is PowerState.ON
    run(d.power_off("hv1"))
    assert bmc.resets == ["GracefulShutdown"]
    assert run(d.power_state("hv1")) is PowerState.OFF
    run(d.power_on("hv1"))
    run(d.power_off("hv1", hard=True))
    assert bmc.resets == ["GracefulShutdown", "On", "ForceOff"]


def test_redfish_wrong_credentials_bad_answer_and_no_server(
    redfish: tuple[FakeBmc, dict[str, Any]], tmp_path: Path
) -> None:
    bmc, spec = redfish
    bad = tmp_path / "bad"
    bad.write_text("nope\n")
    d = driver_for("hv1", parse_power_spec("hv1", {**spec, "password_file": str(bad)}))
    with pytest.raises(PowerError, match="credentials refused"):
        run(d.power_off("hv1"))
    assert bmc.resets == []
    bmc.garbage = True
    d = driver_for("hv1", parse_power_spec("hv1", spec))
    with pytest.raises(PowerError, match="PowerState"):
        run(d.power_state("hv1"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = driver_for("hv1", parse_power_spec("hv1", {**spec, "url": f"http://127.0.0.1:{port}"}))
    with pytest.raises(PowerError) as e:
        run(d.power_state("hv1"))
    assert "\n" not in str(e.value)


def test_redfish_that_never_answers_times_out(tmp_path: Path) -> None:
    # a TCP listener that accepts and never replies
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    spec = {
        "driver": "redfish",
        "url": f"http://127.0.0.1:{srv.getsockname()[1]}",
        "username": "admin",
        "password_file": str(pw),
        "system": "/redfish/v1/Systems/1",
        "timeout_s": 1.0,
    }
    try:
        d = driver_for("hv1", parse_power_spec("hv1", spec))
        with pytest.raises(PowerError, match="hv1"):
            run(d.power_on("hv1"))
    finally:
        srv.close()


# -- Wake-on-LAN -----------------------------------------------------------------------------


def test_wol_sends_the_magic_packet_and_cannot_switch_off() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    spec = {
        "driver": "wol",
        "mac": "52:54:00:12:34:56",
        "broadcast": "127.0.0.1",
        "port": rx.getsockname()[1],
    }
    d = driver_for("hv1", parse_power_spec("hv1", spec))
    try:
        run(d.power_on("hv1"))
        data, _ = rx.recvfrom(1024)
    finally:
        rx.close()
    assert (
        data
        == b"\xff" * 6 + bytes.fromhex("525400123456") * 16
        == magic_packet("52-54-00-12-34-56")
    )
    assert run(d.power_state("hv1")) is PowerState.UNKNOWN
    with pytest.raises(PowerError, match="cannot switch a host off"):
        run(d.power_off("hv1"))


# -- command hooks ---------------------------------------------------------------------------


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_command_hooks_run_argv_with_the_host_and_parse_status(tmp_path: Path) -> None:
    log = tmp_path / "log"
    write = f"import sys; open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    spec = {
        "driver": "command",
        "on": [*py(write), "on", "{host}"],
        "off": [*py(write), "off", "{host}; rm -rf /"],
        "status": py("print('Chassis Power is off')"),
    }
    d = driver_for("hv1", parse_power_spec("hv1", spec))
    run(d.power_on("hv1"))
    run(d.power_off("hv1"))
    assert log.read_text().splitlines() == ["on hv1", "off hv1; rm -rf /"]
    assert run(d.power_state("hv1")) is PowerState.OFF


def test_command_failures_are_one_line_power_errors() -> None:
    cases = [
        (py("import sys; sys.stderr.write('bmc said no\\n'); sys.exit(3)"), "exit 3: bmc said no"),
        (py("import time; time.sleep(30)"), "no answer within"),
        (["/nonexistent/power-tool"], "cannot run"),
    ]
    for argv, msg in cases:
        spec = {"driver": "command", "on": argv, "off": argv, "timeout_s": 1.0}
        d = driver_for("hv1", parse_power_spec("hv1", spec))
        with pytest.raises(PowerError, match=msg) as e:
            run(d.power_on("hv1"))
        assert "\n" not in str(e.value)
    spec = {"driver": "command", "on": ["true"], "off": ["true"], "status": py("print('maybe')")}
    d = driver_for("hv1", parse_power_spec("hv1", spec))
    with pytest.raises(PowerError, match="unexpected answer"):
        run(d.power_state("hv1"))


@pytest.mark.parametrize(
    ("data", "msg"),
    [
        ({"driver": "telnet"}, "host hv1: power:"),
        ({"driver": "ipmi", "address": "x;rm", "username": "a", "password_file": "/p"}, "address"),
        ({"driver": "command", "on": ["/bin/sh", "-c", "x"], "off": ["true"]}, "never a shell"),
        ({"driver": "command", "on": ["ipmitool -H x"], "off": ["true"]}, "argument list"),
        ({"driver": "wol", "mac": "zz"}, "not a MAC"),
        ({"driver": "redfish", "url": "ftp://x", "username": "a", "password_file": "/p"}, "url"),
        ("ipmi", "must be a mapping"),
    ],
)
def test_bad_power_config_is_one_line(data: Any, msg: str) -> None:
    with pytest.raises(PowerConfigError, match=msg) as e:
        build_router({"hv1": data})
    assert "\n" not in str(e.value)
