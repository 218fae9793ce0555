"""Shared by the attack tests: run a reader against a FIFO without hanging the test run."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIFO_WAIT_S = 2.0
"""A reader that refuses a FIFO answers at once; one that blocks is given this long."""


def returns_on_fifo(fifo: Path, read: Callable[[Path], Any]) -> tuple[bool, BaseException | None]:
    """(whether `read(fifo)` came back within FIFO_WAIT_S, what it raised). Nobody writes to the
    FIFO, so a reader that opens it blocks; afterwards the FIFO is opened for writing and closed
    (the reader then sees an empty file), so no thread is left behind."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            read(fifo)
        except BaseException as e:  # the outcome is inspected by the caller
            raised.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(FIFO_WAIT_S)
    came_back = not t.is_alive()
    if not came_back:
        for _ in range(50):  # release the blocked reader: open (it is waiting) and close
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join(0.1)
            if not t.is_alive():
                break
    return came_back, raised[0] if raised else None


def make_fifo(tmp_path: Path, name: str = "input") -> Path:
    p = tmp_path / name
    os.mkfifo(p)
    return p
