"""Reading an operator-given input file with a hard size cap, whatever the file is.

``stat().st_size`` cannot bound a read: ``/dev/zero``, a FIFO or ``/proc`` files report a size of
0 and then never end. ``read_bounded`` reads at most ``limit + 1`` bytes, so memory stays bounded
by the cap for every kind of file, and says in one line what went wrong.

Also the snapshot file's reader and writer (the codec in `snapshot.py` is pure: text in, text
out). An edge module: the pure core never imports it (`tests/unit/test_import_contract.py`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rebalancerd import snapshot as codec
from rebalancerd.domain.model import ClusterSnapshot

_CHUNK = 1 << 20


class InputFileError(ValueError):
    """An input file that cannot be read (missing, unreadable, too large); one line."""


def _open_regular(p: Path, *, devices: bool = False) -> int:
    """A read-only descriptor of `p` if it is a regular file (or, with `devices`, a device such
    as /dev/zero, which a bounded read survives), else InputFileError. Opened with O_NONBLOCK,
    so that opening a FIFO nobody writes to returns at once instead of hanging; a FIFO or a
    socket is always refused."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(p)
        device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        if not (stat.S_ISREG(mode) or (devices and device)):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or special file"
            raise InputFileError(f"{p}: is {kind}, expected a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: str | os.PathLike[str], limit: int, *, regular_only: bool = False) -> bytes:
    """The file's bytes, or InputFileError if it cannot be read or holds more than ``limit``.
    Never blocks on a FIFO or a socket (refused at once). `regular_only`: refuse devices too
    (/dev/zero: what the daemon's own inputs use)."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    p = Path(path)
    try:
        with os.fdopen(_open_regular(p, devices=not regular_only), "rb") as fh:
            chunks: list[bytes] = []
            size = 0
            while size <= limit:
                chunk = fh.read(min(_CHUNK, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise InputFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{p}: is a directory, expected a file") from None
    except PermissionError:
        raise InputFileError(f"{p}: permission denied") from None
    except InputFileError:
        raise
    except OSError as e:
        raise InputFileError(f"{p}: cannot read: {e.strerror or e}") from None
    if size > limit:
        raise InputFileError(f"{p}: file too large (more than {limit} bytes)")
    return b"".join(chunks)


def check_regular_file(path: str | os.PathLike[str]) -> None:
    """InputFileError (one line) unless `path` can be opened for reading as a regular file;
    never blocks (a FIFO is refused, not opened for a blocking read) and reads nothing."""
    p = Path(path)
    try:
        os.close(_open_regular(p))
    except InputFileError:
        raise
    except FileNotFoundError:
        raise InputFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{p}: is a directory, expected a file") from None
    except PermissionError:
        raise InputFileError(f"{p}: permission denied") from None
    except OSError as e:
        raise InputFileError(f"{p}: cannot read: {e.strerror or e}") from None


def read_bounded_text(
    path: str | os.PathLike[str], limit: int, *, regular_only: bool = False
) -> str:
    """``read_bounded`` decoded as UTF-8 (InputFileError when it is not UTF-8 text)."""
    data = read_bounded(path, limit, regular_only=regular_only)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(f"{path}: not UTF-8 text (byte {e.start})") from None


__all__ = [
    "InputFileError",
    "check_regular_file",
    "dump_snapshot",
    "load_snapshot",
    "read_bounded",
    "read_bounded_text",
]


def load_snapshot(path: str | os.PathLike[str]) -> ClusterSnapshot:
    """Read a snapshot file: at most `snapshot.MAX_SNAPSHOT_BYTES` + 1 bytes are read, whatever
    the file is. Raises `snapshot.SnapshotError` (one line)."""
    try:
        data = read_bounded(path, codec.MAX_SNAPSHOT_BYTES)
    except InputFileError as e:
        raise codec.SnapshotError(str(e)) from None
    return codec.loads(data, str(path))


def dump_snapshot(snap: ClusterSnapshot, path: str | os.PathLike[str]) -> None:
    """Write a snapshot file (the codec's JSON and a newline)."""
    Path(path).write_text(codec.dumps(snap) + "\n")
