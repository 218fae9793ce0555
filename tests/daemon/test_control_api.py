"""Control API: request/response over a real unix socket, and SO_PEERCRED refusal of callers
that are neither root nor in the configured group (children really run as another uid)."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rebalancerd.control.client import ControlError, request
from rebalancerd.control.server import ControlRequestError, ControlServer
from rebalancerd.observability import MemoryMetrics

NOBODY = 65534

CHILD = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print(json.dumps({"connect": "EACCES"})); sys.exit(0)
try:
    s.sendall(json.dumps({"command": "status", "args": {}}).encode() + b"\n")
except BrokenPipeError:
    pass  # refused before we wrote: the answer is still there to read
buf = b""
while not buf.endswith(b"\n"):
    c = s.recv(65536)
    if not c:
        break
    buf += c
print(buf.decode().strip())
"""


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Must be traversable by the unprivileged children (tmp_path's parents are 0700).
    d = Path(tempfile.mkdtemp(prefix="rebalancerd-ctl-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _handlers(calls: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    async def status(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(("status", args))
        return {"hosts": [{"name": "h1"}]}

    async def drain(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(("drain", args))
        if args.get("host") != "h1":
            raise ControlRequestError(f"unknown host {args.get('host')!r}")
        return {"host": "h1", "drained": True}

    async def boom(args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    return {"status": status, "drain": drain, "snapshot": boom}


def _system_python() -> str:
    """A Python the unprivileged child can execute (the venv may live under /root, mode 0700)."""
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(cand, os.X_OK):
            return cand
    return sys.executable


async def _child(path: str, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        _system_python(),
        "-I",
        "-c",
        CHILD,
        path,
        user=uid,
        group=gid,
        extra_groups=groups,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run children as nobody")


async def test_root_round_trip_and_errors(sock_dir: Path) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    metrics = MemoryMetrics()
    path = str(sock_dir / "ctl.sock")
    srv = ControlServer(path, _handlers(calls), metrics)
    await srv.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        res = await asyncio.to_thread(request, path, "status")
        assert res == {"hosts": [{"name": "h1"}]}
        res = await asyncio.to_thread(request, path, "drain", host="h1")
        assert res == {"host": "h1", "drained": True}
        with pytest.raises(ControlError, match="unknown host 'nope'"):
            await asyncio.to_thread(request, path, "drain", host="nope")
        with pytest.raises(ControlError, match="unknown command"):
            await asyncio.to_thread(request, path, "reboot")
        with pytest.raises(ControlError, match="internal error: RuntimeError") as ei:
            await asyncio.to_thread(request, path, "snapshot")
        assert "secret" not in str(ei.value)
        assert calls == [("status", {}), ("drain", {"host": "h1"}), ("drain", {"host": "nope"})]
        assert metrics.total("control_requests_total", command="status", result="ok") == 1
        assert metrics.total("control_requests_total", result="error") == 3
        assert metrics.total("errors_total", where="control") == 1
    finally:
        await srv.close()
    assert not os.path.exists(path)
    with pytest.raises(ControlError, match="is rebalancerd running"):
        request(path, "status")


async def test_unprivileged_caller_is_refused_by_peer_credentials(sock_dir: Path) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    metrics = MemoryMetrics()
    path = str(sock_dir / "ctl.sock")
    # mode 0666 so the kernel lets the caller in: the refusal must come from SO_PEERCRED.
    srv = ControlServer(path, _handlers(calls), metrics, mode=0o666)
    await srv.start()
    try:
        out = await _child(path, NOBODY, NOBODY, [])
        assert out["ok"] is False
        assert "permission denied" in out["error"]
        assert calls == []
        assert metrics.total("control_requests_total", result="denied") == 1
        # root still gets through
        assert await asyncio.to_thread(request, path, "status") == {"hosts": [{"name": "h1"}]}
    finally:
        await srv.close()


async def test_configured_group_is_admitted_others_are_not(sock_dir: Path) -> None:
    group = grp.getgrgid(NOBODY).gr_name  # "nogroup" on Debian
    calls: list[tuple[str, dict[str, Any]]] = []
    metrics = MemoryMetrics()
    path = str(sock_dir / "ctl.sock")
    srv = ControlServer(path, _handlers(calls), metrics, group=group, mode=0o666)
    await srv.start()
    try:
        # supplementary group membership is enough
        ok = await _child(path, NOBODY, 1, [NOBODY])
        assert ok == {"ok": True, "result": {"hosts": [{"name": "h1"}]}}
        # same uid without the group: refused
        denied = await _child(path, NOBODY, 1, [])
        assert denied["ok"] is False and group in denied["error"]
        assert len(calls) == 1
    finally:
        await srv.close()


async def test_socket_file_mode_keeps_others_out(sock_dir: Path) -> None:
    path = str(sock_dir / "ctl.sock")
    srv = ControlServer(path, _handlers([]), MemoryMetrics())  # root only: 0600
    await srv.start()
    try:
        out = await _child(path, NOBODY, NOBODY, [])
        assert out == {"connect": "EACCES"}
    finally:
        await srv.close()


async def test_refuses_to_steal_a_live_socket_and_replaces_a_stale_one(sock_dir: Path) -> None:
    path = str(sock_dir / "ctl.sock")
    first = ControlServer(path, _handlers([]), MemoryMetrics())
    await first.start()
    try:
        second = ControlServer(path, _handlers([]), MemoryMetrics())
        with pytest.raises(OSError, match="another rebalancerd"):
            await second.start()
    finally:
        # simulate a crash: the socket file stays behind
        assert first._server is not None
        first._server.close()
    assert os.path.exists(path)
    third = ControlServer(path, _handlers([]), MemoryMetrics())
    await third.start()
    try:
        assert await asyncio.to_thread(request, path, "status") == {"hosts": [{"name": "h1"}]}
    finally:
        await third.close()


async def test_malformed_and_oversized_requests(sock_dir: Path) -> None:
    path = str(sock_dir / "ctl.sock")
    metrics = MemoryMetrics()
    srv = ControlServer(path, _handlers([]), metrics)
    await srv.start()

    async def raw(payload: bytes) -> dict[str, Any]:
        r, w = await asyncio.open_unix_connection(path, limit=1 << 20)
        w.write(payload)
        await w.drain()
        line = await r.readline()
        w.close()
        out: dict[str, Any] = json.loads(line)
        return out

    try:
        assert "malformed" in (await raw(b"not json\n"))["error"]
        assert "malformed" in (await raw(b"[1,2]\n"))["error"]
        assert "malformed" in (await raw(b'{"command": 3}\n'))["error"]
        assert "too large" in (await raw(b"x" * (200 * 1024) + b"\n"))["error"]
        # the server is still serving
        assert await asyncio.to_thread(request, path, "status") == {"hosts": [{"name": "h1"}]}
    finally:
        await srv.close()
