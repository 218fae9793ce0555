"""The watcher reloads on file change and on request (SIGHUP), and survives anything."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from rebalancerd.adapters.clock import SystemClock, VirtualClock
from rebalancerd.daemon.policy_source import PolicyStore, PolicyWatcher, fingerprint, make_store
from rebalancerd.observability import MemoryMetrics
from rebalancerd.policy.schema import Mode

HEAD = "apiVersion: rebalancerd/v1\nkind: Policy\n"


def bump(f: Path, text: str) -> None:
    """Write and make sure the mtime moves even on coarse file systems."""
    st = f.stat() if f.exists() else None
    f.write_text(text)
    if st is not None:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_fingerprint_tracks_policy_files_only(tmp_path: Path) -> None:
    fp0 = fingerprint(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".swap.yaml").write_text("x")
    assert fingerprint(tmp_path) == fp0
    (tmp_path / "a.yml").write_text("x")
    assert fingerprint(tmp_path) != fp0
    assert isinstance(fingerprint(tmp_path / "missing"), str)


def test_poll_reloads_only_on_change_or_request(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(HEAD + "name: a\n")
    store = PolicyStore(tmp_path, MemoryMetrics(), VirtualClock())
    w = PolicyWatcher(store, VirtualClock(), interval_s=1)
    assert w.poll() is None
    bump(f, HEAD + "name: a\nmode: drain\n")
    r = w.poll()
    assert r is not None and r.ok and store.current().mode is Mode.DRAIN
    assert w.poll() is None
    w.request_reload()
    r = w.poll()
    assert r is not None and r.ok and not r.changed


async def test_running_watcher_applies_valid_and_refuses_invalid(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(HEAD + "name: a\n")
    metrics = MemoryMetrics()
    store = make_store(tmp_path, metrics, SystemClock())
    w = PolicyWatcher(store, SystemClock(), interval_s=0.02)
    task = asyncio.create_task(w.run())

    async def until(cond: object) -> None:
        for _ in range(500):
            if callable(cond) and cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition never met")

    try:
        bump(f, HEAD + "name: a\nmode: consolidate\n")
        await until(lambda: store.current().mode is Mode.CONSOLIDATE)
        bump(f, HEAD + "name: a\nmode: drain\nrules: {pins: [{vm: x, hosts: []}]}\n")
        await until(lambda: metrics.total("policy_reloads_total", result="error") == 1)
        assert store.current().mode is Mode.CONSOLIDATE
        assert metrics.gauge("policy_reload_success") == 0.0
        # SIGHUP path: a request reloads even without a change
        n = metrics.total("policy_reloads_total")
        w.request_reload()
        await until(lambda: metrics.total("policy_reloads_total") > n)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


class _InstantClock(SystemClock):
    """Sleeps return at once: the watcher spins through its wait/cleanup code."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


async def test_a_cancel_is_never_lost_whatever_the_watcher_is_awaiting(tmp_path: Path) -> None:
    # Cancel at many different points of the loop: the task must always end cancelled. (A
    # `suppress(CancelledError)` around awaiting its own cancelled sleeper swallowed a cancel
    # that landed there, the watcher ran on, and the daemon's TaskGroup never finished.)
    (tmp_path / "a.yaml").write_text(HEAD + "name: a\n")
    store = PolicyStore(tmp_path, MemoryMetrics(), SystemClock())
    store.reload()
    for spins in range(40):
        watcher = PolicyWatcher(store, _InstantClock(), interval_s=1.0)
        task = asyncio.create_task(watcher.run())
        for _ in range(spins):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert done, f"cancel lost after {spins} event-loop turns"
        assert task.cancelled()


def test_an_explicit_reload_is_not_repeated_by_the_next_poll(tmp_path: Path) -> None:
    # SIGHUP after editing a file: one reload, not a second one when the watcher polls.
    f = tmp_path / "a.yaml"
    f.write_text(HEAD + "name: a\n")
    store = PolicyStore(tmp_path, MemoryMetrics(), VirtualClock())
    store.reload()
    watcher = PolicyWatcher(store, VirtualClock())
    bump(f, HEAD + "name: a\nmode: advisory\n")
    result = watcher.reload_now()
    assert result.ok and result.changed
    assert store.current().mode is Mode.ADVISORY
    assert watcher.poll() is None
    bump(f, HEAD + "name: a\nmode: balance\n")  # a later edit is still picked up
    later = watcher.poll()
    assert later is not None and later.changed
