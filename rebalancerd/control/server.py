"""Control API server: asyncio unix-socket server with a peer-credential check.

Who may call: uid 0, or a process whose primary or supplementary groups include the configured
group (read from SO_PEERCRED and /proc/<pid>/status), or whose user is listed as a member of that
group. Everyone else gets ``{"ok": false, "error": "permission denied ..."}`` and the refusal is
logged and counted in ``rebalancerd_control_requests_total{result="denied"}``. The socket file is
also created ``root:<group>`` with mode 0660 (0600 without a group), so the kernel refuses most
callers before we even see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from rebalancerd.control.protocol import (
    COMMANDS,
    LISTEN_BACKLOG,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_DEPTH,
    REQUEST_TIMEOUT_S,
    json_safe,
    nesting_depth,
)
from rebalancerd.ports import MetricsSink

log = structlog.get_logger("rebalancerd.control")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlRequestError(Exception):
    """Raised by a handler for bad input (unknown host...): sent back as a one-line error."""


@dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def _proc_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:] if g.isdigit()}
    except OSError:
        pass
    return set()


def authorized(cred: PeerCred, group_gid: int | None) -> bool:
    if cred.uid == 0:
        return True
    if group_gid is None:
        return False
    if cred.gid == group_gid or group_gid in _proc_groups(cred.pid):
        return True
    try:
        user = pwd.getpwuid(cred.uid).pw_name
        return user in grp.getgrgid(group_gid).gr_mem
    except KeyError:
        return False


class ControlServer:
    def __init__(
        self,
        path: str,
        handlers: Mapping[str, Handler],
        metrics: MetricsSink,
        *,
        group: str | None = None,
        mode: int | None = None,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.metrics = metrics
        self.group = group
        self.mode = mode
        self._server: asyncio.base_events.Server | None = None
        self._gid: int | None = None
        self._bound = False

    @property
    def group_gid(self) -> int | None:
        return self._gid

    def set_group(self, group: str | None) -> None:
        """Change the allowed group live (SIGHUP); also re-chowns the socket file."""
        self.group = group
        self._gid = grp.getgrnam(group).gr_gid if group is not None else None
        if self._server is not None:
            self._apply_file_perms()

    def _apply_file_perms(self) -> None:
        mode = self.mode if self.mode is not None else (0o660 if self._gid is not None else 0o600)
        if self._gid is not None:
            os.chown(self.path, 0 if os.geteuid() == 0 else -1, self._gid)
        os.chmod(self.path, mode)

    async def start(self) -> None:
        """Bind the socket. Raises OSError if another daemon already serves it."""
        self._gid = grp.getgrnam(self.group).gr_gid if self.group is not None else None
        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if p.exists() or p.is_symlink():
            if not stat.S_ISSOCK(p.lstat().st_mode):
                raise OSError(f"control socket {p}: exists and is not a socket")
            if await _in_use(self.path):
                raise OSError(f"control socket {p}: another rebalancerd is serving it")
            p.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_REQUEST_BYTES, backlog=LISTEN_BACKLOG
            )
        finally:
            os.umask(old)
        self._bound = True
        self._apply_file_perms()
        log.info("control_listening", socket=self.path, group=self.group)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        if self._bound:  # never remove a socket another daemon serves
            self._bound = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def serve_until(self, stop: asyncio.Event) -> None:
        """A TaskGroup-friendly task: start, serve until `stop`, close."""
        if self._server is None:
            await self.start()
        try:
            await stop.wait()
        finally:
            await self.close()

    # ------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command = "unknown"
        result = "error"
        try:
            sock = writer.get_extra_info("socket")
            cred = peer_cred(sock)
            if not authorized(cred, self._gid):
                result = "denied"
                log.warning(
                    "control_denied", peer_pid=cred.pid, peer_uid=cred.uid, peer_gid=cred.gid
                )
                await _send(
                    writer,
                    {
                        "ok": False,
                        "error": "permission denied: the control API needs root"
                        + (f" or group {self.group}" if self.group else ""),
                    },
                )
                return
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            except (ValueError, asyncio.LimitOverrunError):
                await _send(writer, {"ok": False, "error": "request too large"})
                return
            except TimeoutError:
                await _send(writer, {"ok": False, "error": "request timed out"})
                return
            try:
                if nesting_depth(line) > MAX_REQUEST_DEPTH:
                    raise ValueError(f"nested deeper than {MAX_REQUEST_DEPTH} levels")
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
                cmd = req.get("command")
                args = req.get("args") or {}
                if not isinstance(cmd, str) or not isinstance(args, dict):
                    raise ValueError("command must be a string and args an object")
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                await _send(writer, {"ok": False, "error": f"malformed request: {e}"[:300]})
                return
            command = cmd if cmd in COMMANDS else "unknown"
            handler = self.handlers.get(cmd)
            if handler is None:
                await _send(writer, {"ok": False, "error": f"unknown command {cmd[:64]!r}"})
                return
            log.info("control_request", command=cmd, peer_uid=cred.uid, peer_pid=cred.pid)
            try:
                out = await handler(args)
            except ControlRequestError as e:
                await _send(writer, {"ok": False, "error": str(e)})
                return
            except Exception as e:
                self.metrics.inc("errors_total", where="control")
                log.exception("control_handler_failed", command=cmd)
                await _send(writer, {"ok": False, "error": f"internal error: {type(e).__name__}"})
                return
            await _send(writer, {"ok": True, "result": out})
            result = "ok"
        except (ConnectionError, OSError) as e:
            log.info("control_client_gone", error=str(e))
        except Exception as e:  # every request gets an answer, even on a bug here
            self.metrics.inc("errors_total", where="control")
            log.error("control_request_failed", error=f"{type(e).__name__}: {e}"[:300])
            with contextlib.suppress(Exception):
                await _send(writer, {"ok": False, "error": f"internal error: {type(e).__name__}"})
        finally:
            self.metrics.inc("control_requests_total", command=command, result=result)
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    try:
        text = json.dumps(obj, default=str, allow_nan=False)
    except ValueError:  # a NaN/inf somewhere in the answer: send it as null, never fail
        log.warning("control_answer_not_finite", detail="non-finite values sent as null")
        text = json.dumps(json_safe(obj), default=str, allow_nan=False)
    writer.write(text.encode() + b"\n")
    await writer.drain()


async def _in_use(path: str) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_unix_connection(path), 1.0)
    except (OSError, TimeoutError):
        return False
    w.close()
    with contextlib.suppress(Exception):
        await w.wait_closed()
    return True
