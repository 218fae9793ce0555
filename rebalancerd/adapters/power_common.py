"""What the power adapters share: bounded subprocess runs, secret files, one-line errors.

Every call is bounded by a timeout and fails with ``PowerError`` carrying one line; nothing here
ever runs a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rebalancerd.ports import PowerError

MAX_OUTPUT_BYTES = 64 * 1024
MAX_SECRET_BYTES = 4096


def one_line(text: str, most: int = 200) -> str:
    """The text on one line, at most `most` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= most else flat[: most - 3] + "..."


def read_secret(path: str) -> str:
    """The first line of a secret file (a regular file, at most 4 KiB); PowerError otherwise.
    Never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise PowerError(f"password file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PowerError(f"password file {path}: not a regular file")
        if st.st_size > MAX_SECRET_BYTES:
            raise PowerError(f"password file {path}: larger than {MAX_SECRET_BYTES} bytes")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise PowerError(f"password file {path}: first line is empty")
    return lines[0]


@dataclass(frozen=True, slots=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str


async def run_bounded(
    argv: Sequence[str],
    timeout_s: float,
    *,
    env: Mapping[str, str] | None = None,
    what: str = "",
) -> RunResult:
    """Run `argv` (no shell) for at most `timeout_s`; kill it at the deadline. PowerError if it
    cannot start or times out; the exit code is the caller's to judge."""
    label = what or argv[0]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
    except OSError as e:
        raise PowerError(f"{label}: cannot run {argv[0]}: {e.strerror or e}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5.0)
        raise PowerError(f"{label}: no answer within {timeout_s:g}s") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        raise
    return RunResult(
        proc.returncode if proc.returncode is not None else -1,
        out[:MAX_OUTPUT_BYTES].decode("utf-8", "replace"),
        err[:MAX_OUTPUT_BYTES].decode("utf-8", "replace"),
    )


def last_error_line(stderr: str, ignore: Sequence[str] = ()) -> str:
    """The most telling line of a tool's stderr: the last non-empty one not in `ignore`."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not any(i in ln for i in ignore)]
    pick = useful or lines
    return one_line(pick[-1]) if pick else "no error message"
