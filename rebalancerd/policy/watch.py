"""Reload the policy store when the policy directory changes, or on request (SIGHUP).

Polls the names, sizes and modification times of the directory's policy files every
``interval_s`` seconds (no inotify dependency). The daemon wires SIGHUP with::

    loop.add_signal_handler(signal.SIGHUP, watcher.request_reload)

and runs ``watcher.run()`` as a task. This is the one module under ``policy/`` allowed to use
asyncio and structlog.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import structlog

from rebalancerd.adapters.policy_files import POLICY_SUFFIXES
from rebalancerd.policy.store import PolicyStore, ReloadResult
from rebalancerd.ports import Clock, MetricsSink

Fingerprint = tuple[tuple[str, int, int, int], ...] | str


def fingerprint(directory: Path) -> Fingerprint:
    """What changes when a policy file is added, removed, renamed or written."""
    try:
        entries = []
        with os.scandir(directory) as it:
            for e in it:
                if e.name.startswith(".") or not e.name.endswith(POLICY_SUFFIXES):
                    continue
                try:
                    st = e.stat()
                except OSError:
                    continue
                entries.append((e.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sorted(entries))
    except OSError as e:
        return f"error:{type(e).__name__}"


class PolicyWatcher:
    def __init__(self, store: PolicyStore, clock: Clock, interval_s: float = 2.0) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.store = store
        self.clock = clock
        self.interval_s = interval_s
        self._last: Fingerprint = fingerprint(store.directory)
        self._requested: asyncio.Event | None = None
        self._pending = False

    def request_reload(self) -> None:
        """Reload at the next opportunity (safe to call from a signal handler on the loop)."""
        self._pending = True
        if self._requested is not None:
            self._requested.set()

    def reload_now(self) -> ReloadResult:
        """Reload at once (SIGHUP, `rebalancerd reload`) and take the files as seen, so the
        next poll does not reload (and log) the same change a second time."""
        return self._reload(fingerprint(self.store.directory))

    def poll(self) -> ReloadResult | None:
        """Reload if the files changed or a reload was requested; else None."""
        fp = fingerprint(self.store.directory)
        if fp == self._last and not self._pending:
            return None
        return self._reload(fp)

    def _reload(self, fp: Fingerprint) -> ReloadResult:
        self._pending = False
        self._last = fp  # taken before reading: a write during the reload is seen next poll
        return self.store.reload()

    async def run(self) -> None:
        """Poll until cancelled."""
        self._requested = asyncio.Event()
        if self._pending:
            self._requested.set()
        while True:
            sleeper = asyncio.ensure_future(self.clock.sleep(self.interval_s))
            waiter = asyncio.ensure_future(self._requested.wait())
            try:
                await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # cancel, never await: awaiting a cancelled helper under
                # suppress(CancelledError) would also swallow a cancel of this task that lands
                # there, and the watcher would run on (the daemon's shutdown hung on it)
                for t in (sleeper, waiter):
                    t.cancel()
            self._requested.clear()
            try:
                self.poll()
            except Exception as e:  # never let the watcher die
                self.store.log.error("policy_watch_failed", error=f"{type(e).__name__}: {e}")


def make_store(directory: str | Path, metrics: MetricsSink, clock: Clock, **kw: Any) -> PolicyStore:
    """A PolicyStore that logs through structlog (what the daemon uses)."""
    return PolicyStore(
        directory, metrics, clock, log=structlog.get_logger("rebalancerd.policy"), **kw
    )
