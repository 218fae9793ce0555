"""Control API client (blocking; for the CLI).

``request(socket_path, command, **args) -> dict`` sends one command and returns the daemon's
result object, or raises ControlError with a one-line message (daemon not running, permission
denied, bad request...).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any

from rebalancerd.control.protocol import MAX_RESPONSE_BYTES

DEFAULT_TIMEOUT_S = 30.0
CONNECT_RETRY_S = 3.0
"""How long a refused or EAGAIN connect (the daemon's listen queue full in a burst) is retried."""


class ControlError(OSError):
    """The control request failed; the message is one line. (An OSError, so callers that treat
    'cannot reach the daemon' as an OS error catch it too.)"""


def default_socket() -> str:
    from rebalancerd.daemon.config import DEFAULT_CONTROL_SOCKET

    return os.environ.get("REBALANCERD_CONTROL_SOCKET", DEFAULT_CONTROL_SOCKET)


def request(
    socket_path: str | None,
    command: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **args: Any,
) -> dict[str, Any]:
    path = socket_path or default_socket()
    sock = _connect(path, timeout_s)
    try:
        try:
            # The daemon may answer early (a refusal) and close: still read its answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_RESPONSE_BYTES:
                    raise ControlError("response too large")
        except TimeoutError:
            raise ControlError(f"{path}: no answer within {timeout_s:g}s") from None
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        sock.close()
    if not buf:
        raise ControlError(f"{path}: the daemon closed the connection without answering")
    try:
        resp = json.loads(buf)
    except ValueError:
        raise ControlError(f"{path}: malformed answer from the daemon") from None
    if not isinstance(resp, dict):
        raise ControlError(f"{path}: malformed answer from the daemon")
    if not resp.get("ok"):
        raise ControlError(str(resp.get("error") or "request failed"))
    result = resp.get("result")
    return result if isinstance(result, dict) else {"result": result}


def _connect(path: str, timeout_s: float) -> socket.socket:
    """A socket connected to `path`. A refused or EAGAIN connect (the listen queue is full while
    many clients connect at once, or the daemon is restarting) is retried for CONNECT_RETRY_S
    with a short growing pause; then, or on any other error, ControlError (one line)."""
    deadline = time.monotonic() + min(CONNECT_RETRY_S, timeout_s)
    pause = 0.01
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
            return sock
        except (ConnectionRefusedError, BlockingIOError) as e:
            sock.close()
            left = deadline - time.monotonic()
            if left <= 0:
                if isinstance(e, ConnectionRefusedError):
                    raise ControlError(
                        f"{path}: connection refused (is rebalancerd running?)"
                    ) from None
                raise ControlError(f"{path}: the daemon is not accepting connections") from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.2)
        except FileNotFoundError:
            sock.close()
            raise ControlError(f"{path}: no such socket (is rebalancerd running?)") from None
        except PermissionError:
            sock.close()
            raise ControlError(
                f"{path}: permission denied (the control API needs root or the control group)"
            ) from None
        except OSError as e:
            sock.close()
            raise ControlError(f"{path}: {e.strerror or e}") from None
