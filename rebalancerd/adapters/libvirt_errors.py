"""libvirt errors: their code, a one-line message, and whether they mean the connection is gone."""

from __future__ import annotations

import libvirt


def error_code(exc: BaseException) -> int | None:
    """libvirt's error code of an exception (None if it is not a libvirt error or has none)."""
    if isinstance(exc, libvirt.libvirtError):
        code = exc.get_error_code()
        return int(code) if code is not None else None
    return None


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_CONNECTION_ERRORS = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_AUTH_FAILED,
}


def is_connection_error(exc: BaseException) -> bool:
    """The error means the connection to the host is broken (drop it and reconnect)."""
    code = error_code(exc)
    if code in _CONNECTION_ERRORS:
        return True
    return "client socket is closed" in str(exc) or "keepalive timeout" in str(exc)
