"""Issue 14: special files in the policy directory (a FIFO named x.yaml, a device, a symlink
loop) are refused at once with a one-line issue, never read (a FIFO hung the daemon)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from rebalancerd.adapters.clock import SystemClock
from rebalancerd.adapters.policy_files import parse_policy_dir, parse_policy_file
from rebalancerd.daemon.policy_source import PolicyStore, PolicyWatcher, read_off_loop
from rebalancerd.files import InputFileError, read_bounded
from rebalancerd.observability import MemoryMetrics

HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\n"


@pytest.mark.timeout(30)  # a hang guard: a blocking open of a FIFO never returns
def test_fifo_policy_file_is_refused_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEAD + "name: a\n")
    os.mkfifo(tmp_path / "x.yaml")  # nobody writes to it: a blocking open never returns
    _parsed, problems = parse_policy_dir(tmp_path)
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'x.yaml'}:1:1: is a FIFO, expected a regular file"
    ]
    store = PolicyStore(tmp_path, MemoryMetrics(), SystemClock())
    assert store.last_result is not None and not store.last_result.ok


def test_device_and_symlink_loop_are_one_line_issues(tmp_path: Path) -> None:
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    z = parse_policy_file(tmp_path / "zero.yaml")
    assert z.policy is None and "device or special file" in z.problems[0].message
    lp = parse_policy_file(tmp_path / "loop.yaml")
    assert lp.policy is None and "symbolic links" in lp.problems[0].message
    for p in (*z.problems, *lp.problems):
        assert "\n" not in str(p)


def test_read_bounded_regular_only(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputFileError, match="is a FIFO"):
        read_bounded(tmp_path / "fifo", 10, regular_only=True)
    with pytest.raises(InputFileError, match="device"):
        read_bounded("/dev/zero", 10, regular_only=True)
    with pytest.raises(InputFileError, match="is a directory"):
        read_bounded(tmp_path, 10, regular_only=True)
    (tmp_path / "f").write_bytes(b"x" * 11)
    with pytest.raises(InputFileError, match="too large"):
        read_bounded(tmp_path / "f", 10, regular_only=True)
    assert read_bounded(tmp_path / "f", 11, regular_only=True) == b"x" * 11


async def test_a_slow_read_does_not_stop_the_event_loop(tmp_path: Path) -> None:
    # the watcher reads in a worker thread: the loop keeps turning meanwhile, and a read that
    # never ends is given up after the timeout
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    t = asyncio.create_task(ticker())
    try:
        with pytest.raises(TimeoutError):
            await read_off_loop(lambda: time.sleep(0.5), timeout_s=0.3)
        assert ticks >= 10
    finally:
        t.cancel()
    (tmp_path / "a.yaml").write_text(HEAD + "name: a\n")
    store = PolicyStore(tmp_path, MemoryMetrics(), SystemClock(), load=False)
    w = PolicyWatcher(store, SystemClock(), interval_s=0.02)
    w.request_reload()
    task = asyncio.create_task(w.run())
    for _ in range(300):
        if store.last_result is not None:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert store.current().name == "a"
