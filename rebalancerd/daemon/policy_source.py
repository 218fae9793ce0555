"""Where the daemon's policy comes from: the policy store and the directory watcher.

Policy store
------------
``PolicyStore(dir, metrics, clock)`` reads every policy file of ``dir`` at construction and on
each ``reload()``:

- all files valid (one by one and together) -> the new set takes effect at once;
- any file invalid -> the old set stays in force, every problem is logged
  (``policy_reload_failed``) and ``policy_reload_success`` is set to 0.

Each attempt sets ``policy_reload_success`` (1/0) and ``policy_reload_timestamp_seconds`` and
counts ``policy_reloads_total{result="ok"|"error"}``.

If the very first load fails there is no old set: the store then holds ``FALLBACK``, an
*advisory, dry-run* policy that never moves a VM, until a reload succeeds. A broken file never
makes the daemon act on defaults the operator did not choose.

Empty directory
---------------
- At the first load (daemon start), a directory without policy files puts the built-in default
  policy in force (``default_policy()``: mode balance, no exclusions, which *does* migrate); the
  store logs ``policy_default_in_force`` saying so.
- Once a set of policy files was in force, a directory that turns empty (``rm *.yaml && cp ...``,
  a half-done deploy) never replaces it: the last policy stays in force, the attempt is logged
  (``policy_dir_empty_kept``), counted (``policy_reloads_total{result="empty"}``), sets
  ``policy_dir_empty`` to 1 and ``policy_reload_success`` to 0, and ``status`` shows it.

Policy files are read off the event loop (``read_off_loop``: a worker thread, with a timeout),
regular files only (a FIFO named ``x.yaml`` is refused at once, never opened for a blocking
read), at most ``MAX_FILE_BYTES`` each (``adapters/policy_files.py``).

The store is a zero-argument callable returning the policy in force, so it can be passed as the
control loop's ``policy_provider``. It logs through any logger with structlog-style
``info``/``error`` methods (``make_store`` passes structlog's).

Watcher
-------
``PolicyWatcher`` reloads the store when the policy directory changes, or on request (SIGHUP).
It polls the names, sizes and modification times of the directory's policy files every
``interval_s`` seconds (no inotify dependency). The daemon runs ``watcher.run()`` as a task and
calls ``watcher.reload_now()`` on SIGHUP.

This file I/O lives here, in the daemon, so that ``rebalancerd.policy`` (models, parsing,
resolution) stays pure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from rebalancerd.adapters.policy_files import POLICY_SUFFIXES, parse_policy_dir
from rebalancerd.policy.combine import PolicySet
from rebalancerd.policy.issues import PolicyIssue
from rebalancerd.policy.schema import Mode, Policy, default_policy
from rebalancerd.ports import Clock, MetricsSink

FALLBACK: Policy = default_policy().model_copy(
    update={"name": "fallback-no-valid-policy", "mode": Mode.ADVISORY, "dry_run": True}
)
"""In force when no valid policy set was ever loaded: plans and explains, never acts."""


class Logger(Protocol):
    """The subset of a structlog logger the store uses."""

    def info(self, event: str, **kw: Any) -> Any: ...

    def error(self, event: str, **kw: Any) -> Any: ...


class _StdLogger:
    """Default logger: stdlib logging with key=value pairs (the daemon passes structlog's)."""

    def __init__(self) -> None:
        self._log = logging.getLogger("rebalancerd.policy")

    def _fmt(self, event: str, kw: dict[str, Any]) -> str:
        return " ".join([event, *(f"{k}={v!r}" for k, v in kw.items())])

    def info(self, event: str, **kw: Any) -> None:
        self._log.info(self._fmt(event, kw))

    def error(self, event: str, **kw: Any) -> None:
        self._log.error(self._fmt(event, kw))


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    """True if the files were all valid and are now in force."""
    changed: bool
    """True if the policy in force differs from before."""
    problems: tuple[PolicyIssue, ...]
    files: tuple[str, ...]
    """The policy files read."""
    policy: Policy
    """The policy in force after this attempt (the old one if not ok)."""
    at: float = 0.0
    """When the attempt was made (the store's clock, epoch seconds)."""
    kept_on_empty: bool = False
    """The directory held no policy file and the last policy was kept (see the module doc)."""

    def summary(self) -> str:
        if self.kept_on_empty:
            return f"policy directory empty, keeping {self.policy.name!r} (last policy in force)"
        if self.ok:
            what = "changed" if self.changed else "unchanged"
            return f"policy reloaded ({len(self.files)} files, {what}): {self.policy.name}"
        first = str(self.problems[0]) if self.problems else "invalid"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"policy reload failed, keeping {self.policy.name!r}: {first}{more}"


class PolicyStore:
    def __init__(
        self,
        directory: str | Path,
        metrics: MetricsSink,
        clock: Clock,
        *,
        log: Logger | None = None,
        load: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.metrics = metrics
        self.clock = clock
        self.log: Logger = log if log is not None else _StdLogger()
        self._lock = threading.Lock()
        self._set: PolicySet | None = None
        self._policy: Policy = FALLBACK
        self._live: tuple[str, ...] | None = None
        """Names of the scheduled set's policies in force when last looked at."""
        self._scheduled_policy: Policy = FALLBACK
        self._listeners: list[Callable[[ReloadResult], None]] = []
        self.last_result: ReloadResult | None = None
        self._first_report = True
        if load:
            self.reload()

    # -- reading -------------------------------------------------------------------------------
    def current(self) -> Policy:
        """The policy in force (the effective policy of the last valid set). With scheduled
        policies, the one in force at the store's clock now: a change of the set in force is
        logged (``policy_schedule_changed``) and shown by the ``policy_scheduled_in_force``
        gauge per policy name."""
        s = self._set
        if s is None or not s.scheduled:
            return self._policy
        live = tuple(p.name for p in s.in_force(self.clock.now()))
        if live != self._live:
            with self._lock:
                self._scheduled_policy = s.effective(self.clock.now())
                before, self._live = self._live, live
            for p in s.policies:
                on = 1.0 if p.name in live else 0.0
                self.metrics.set("policy_scheduled_in_force", on, policy=p.name)
            self.log.info(
                "policy_schedule_changed",
                in_force=list(live),
                before=list(before or ()),
                policy=self._scheduled_policy.name,
                mode=self._scheduled_policy.mode.value,
            )
        return self._scheduled_policy

    __call__ = current

    @property
    def policy_set(self) -> PolicySet | None:
        """The last valid set of files (None if none was ever valid)."""
        return self._set

    @property
    def healthy(self) -> bool:
        """True if the last reload attempt succeeded."""
        return self.last_result is not None and self.last_result.ok

    def add_listener(self, fn: Callable[[ReloadResult], None]) -> None:
        """Called after every reload attempt (from the thread that reloaded)."""
        self._listeners.append(fn)

    # -- reloading -----------------------------------------------------------------------------
    def reload(self) -> ReloadResult:
        """Read every file again; apply all of them or none. Never raises for bad files."""
        with self._lock:
            try:
                parsed, problems = parse_policy_dir(self.directory)
            except Exception as e:  # a loader bug must not stop the daemon either
                parsed, problems = (
                    [],
                    [PolicyIssue(str(self.directory), 1, 1, f"reload failed: {e}")],
                )
            files = tuple(p.source for p in parsed)
            old = self._policy
            at = self.clock.now()
            if problems:
                result = ReloadResult(False, False, tuple(problems), files, old, at)
            elif not files and self._set is not None and self._set.files:
                # files were in force: an empty directory is a deploy in progress, not a choice
                empty = PolicyIssue(str(self.directory), 1, 1, "no policy files")
                result = ReloadResult(False, False, (empty,), files, old, at, kept_on_empty=True)
            else:
                new_set = PolicySet(tuple(p.policy for p in parsed if p.policy is not None), files)
                new = new_set.effective()
                self._set = new_set
                self._policy = new
                self._live = None  # a new set: the scheduled policy is computed afresh
                result = ReloadResult(True, new != old, (), files, new, at)
            self.last_result = result
        self._report(result)
        for fn in list(self._listeners):
            try:
                fn(result)
            except Exception as e:
                self.log.error("policy_listener_failed", error=f"{type(e).__name__}: {e}")
        return result

    def _report(self, r: ReloadResult) -> None:
        self.metrics.set("policy_reload_success", 1.0 if r.ok else 0.0)
        self.metrics.set("policy_reload_timestamp_seconds", r.at)
        self.metrics.set("policy_dir_empty", 1.0 if r.kept_on_empty else 0.0)
        outcome = "empty" if r.kept_on_empty else "ok" if r.ok else "error"
        self.metrics.inc("policy_reloads_total", result=outcome)
        if r.kept_on_empty:
            self.log.error(
                "policy_dir_empty_kept",
                directory=str(self.directory),
                keeping=r.policy.name,
                mode=r.policy.mode.value,
                error=r.summary(),
            )
            return
        if r.ok and not r.files and self._first_report:
            self.log.info(
                "policy_default_in_force",
                directory=str(self.directory),
                policy=r.policy.name,
                mode=r.policy.mode.value,
                detail="no policy file at start: the built-in default policy is in force and "
                "may migrate VMs; add a policy file (mode: advisory to only plan)",
            )
        self._first_report = False
        if r.ok:
            self.log.info(
                "policy_reloaded",
                directory=str(self.directory),
                files=len(r.files),
                policy=r.policy.name,
                mode=r.policy.mode.value,
                changed=r.changed,
            )
        else:
            self.log.error(
                "policy_reload_failed",
                directory=str(self.directory),
                keeping=r.policy.name,
                problems=[str(p) for p in r.problems],
                error=r.summary(),
            )


# ---------------------------------------------------------------------------------------------
# Reading off the event loop

READ_TIMEOUT_S = 30.0
"""Longest the daemon waits for one reading of the policy directory (a hung NFS mount...)."""

T = TypeVar("T")


async def read_off_loop(read: Callable[[], T], timeout_s: float = READ_TIMEOUT_S) -> T:
    """Run a blocking read of the policy files in a worker thread, so that the event loop (control
    API, planning, watchdog) goes on meanwhile; TimeoutError after `timeout_s` (the thread is
    left to finish on its own; the store's lock keeps a later reload from overlapping it)."""
    # asyncio.wait, not wait_for: 3.11's wait_for drops a cancel that lands as the read ends
    job = asyncio.ensure_future(asyncio.to_thread(read))
    try:
        done, _ = await asyncio.wait({job}, timeout=timeout_s)
    finally:
        job.cancel()  # a no-op once done; never awaited here (see PolicyWatcher.run)
    if not done:
        raise TimeoutError(f"not done within {timeout_s:g}s")
    return job.result()


# ---------------------------------------------------------------------------------------------
# Watching the directory

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
                await read_off_loop(self.poll)
            except TimeoutError:
                self.store.metrics.inc("errors_total", where="policy_watch")
                self.store.log.error(
                    "policy_read_timeout",
                    directory=str(self.store.directory),
                    timeout_s=READ_TIMEOUT_S,
                    kept=self.store.current().name,
                )
            except Exception as e:  # never let the watcher die
                self.store.log.error("policy_watch_failed", error=f"{type(e).__name__}: {e}")


def make_store(directory: str | Path, metrics: MetricsSink, clock: Clock, **kw: Any) -> PolicyStore:
    """A PolicyStore that logs through structlog (what the daemon uses)."""
    return PolicyStore(
        directory, metrics, clock, log=structlog.get_logger("rebalancerd.policy"), **kw
    )
