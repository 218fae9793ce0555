"""The executor refuses to act without its journal, on a real file system made read-only or
full under it (a tmpfs mounted for the test; needs root and mount, as in CI)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rebalancerd.adapters.clock import VirtualClock
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal
from rebalancerd.observability import MemoryMetrics
from tests.unit.execution.fakes import FakeHypervisor, cluster, mig, plan, policy

pytestmark = pytest.mark.fault


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    try:
        _run("mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt))
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    try:
        yield mnt
    finally:
        # lazy: a journal left open by a failed test must not keep the mount alive
        subprocess.run(["umount", "-l", str(mnt / "state")], capture_output=True, timeout=30)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


async def test_state_dir_read_only_then_writable_again(small_fs: Path) -> None:
    clock = VirtualClock()
    hv = FakeHypervisor.for_snapshot(clock, cluster())
    metrics = MemoryMetrics()
    state = small_fs / "state"
    journal = Journal.open(state)
    ex = Executor(hv, clock, metrics, journal)
    # the state directory turns read-only under the running daemon
    _run("mount", "--bind", str(state), str(state))
    _run("mount", "-o", "remount,bind,ro", str(state))
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert [r.reason for r in rep.skipped] == ["journal_unwritable"]
    assert hv.calls == [] and metrics.gauge("journal_writable") == 0.0
    assert metrics.total("migrations_skipped_total", reason="journal_unwritable") == 1
    _run("umount", str(state))
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert len(rep.succeeded) == 1 and metrics.gauge("journal_writable") == 1.0
    journal.close()


async def test_state_dir_full(small_fs: Path) -> None:
    clock = VirtualClock()
    hv = FakeHypervisor.for_snapshot(clock, cluster())
    metrics = MemoryMetrics()
    journal = Journal.open(small_fs / "state")
    ex = Executor(hv, clock, metrics, journal)
    filler = small_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(fd, b"x" * 65536)
    finally:
        os.close(fd)
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert [r.reason for r in rep.skipped] == ["journal_unwritable"] and hv.calls == []
    assert metrics.gauge("journal_writable") == 0.0
    filler.unlink()
    rep = await ex.execute(plan([mig("vm0-0", "h0", "h1")]), cluster(), policy())
    assert len(rep.succeeded) == 1 and hv.where("vm0-0") == ["h1"]
    journal.close()
