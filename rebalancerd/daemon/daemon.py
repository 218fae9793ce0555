"""The daemon's life cycle: it builds its parts (``daemon/wiring.py``) and runs telemetry, the
policy watcher, the control loop, the control API, /metrics and the systemd notify protocol in
one TaskGroup.

Life cycle
----------
start-up   bind /metrics, build the parts, open the journal (a state directory that cannot be
           written -> the daemon runs but refuses to migrate, ``journal_writable`` = 0), load
           the policies, bind the control socket, send ``READY=1``; then reconcile the journal
           (moves interrupted by a crash) before the first planning cycle.
running    the loop plans every ``intervals.plan_s`` and early on a drain request or a new
           hotspot; ``WATCHDOG=1`` is sent only while the loop is healthy (``daemon/health.py``).
SIGHUP     ``RELOADING=1``: re-read the config file and the policies (``daemon/reload.py``),
           then ``READY=1``.
SIGTERM    ``STOPPING=1``: no new plan, no new migration; in-flight migrations may finish for
           ``shutdown_deadline_s`` seconds; after that the executor aborts them (the VM stays on
           its source) and the daemon exits 0.

Drains requested through the control API (``daemon/control_api.py``) are kept in
``<state_dir>/drained.json`` so they survive a restart (``daemon/intent.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

import structlog

from rebalancerd import __version__
from rebalancerd.adapters.clock import ScaledClock, SystemClock
from rebalancerd.adapters.metrics import MetricsServer, PrometheusMetrics, serve
from rebalancerd.adapters.systemd import (
    NullNotifier,
    SystemdNotifier,
    from_env,
    watchdog_interval_s,
)
from rebalancerd.daemon.config import DaemonConfig, preflight_problems
from rebalancerd.daemon.control_api import ControlApi
from rebalancerd.daemon.health import Progress, Watchdog, health_verdict
from rebalancerd.daemon.intent import finished_move_backs
from rebalancerd.daemon.loop import CycleReport, hot_hosts
from rebalancerd.daemon.policy_source import READ_TIMEOUT_S, read_off_loop
from rebalancerd.daemon.reload import reload_config, reload_summary
from rebalancerd.daemon.wiring import Parts, StartupError, build_parts
from rebalancerd.observability import KNOWN_LABEL_VALUES, LabelValues
from rebalancerd.ports import Clock
from rebalancerd.telemetry.schema import RejectReason

log = structlog.get_logger("rebalancerd.daemon")

ABORT_GRACE_S = 30.0
"""After the shutdown deadline: how long aborted migrations get to settle before we exit."""
DECISIONS_KEPT = 20
STARTUP_LABEL_VALUES: LabelValues = {
    **KNOWN_LABEL_VALUES,
    "telemetry_rejected_total": {"reason": tuple(r.value for r in RejectReason)},
}
"""Counter series the daemon exports at 0 from start-up (alerts use ``increase()`` on them)."""


class Daemon:
    parts: Parts
    """Set by `start()`; everything the daemon runs."""

    def __init__(
        self,
        cfg: DaemonConfig,
        *,
        config_path: str | None = None,
        notifier: SystemdNotifier | NullNotifier | None = None,
        env: dict[str, str] | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        """`overrides`: top-level config fields set on the command line (--dry-run...); they
        stay in force across reloads of the config file."""
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.notifier = notifier if notifier is not None else from_env(env)
        self.metrics = PrometheusMetrics()
        self.metrics.initialise(STARTUP_LABEL_VALUES)
        self.metrics.set("build_info", 1.0, version=__version__)
        self.clock: Clock = (
            ScaledClock(cfg.sim.speed) if cfg.simulate and cfg.sim.speed != 1.0 else SystemClock()
        )
        self.started_at = time.time()
        self.api = ControlApi(self)
        self.watchdog = Watchdog(self.health, self.notifier, watchdog_interval_s(env))
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self.phase = "starting"
        self.reconcile_report: dict[str, Any] | None = None
        self._resources = contextlib.AsyncExitStack()
        """What start() opened, closed by close() (last opened first)."""
        self._stop_planning = asyncio.Event()
        self._closing = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._loop_started: float | None = None
        self._brain: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()

    # -- start-up ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind /metrics, build the parts, bind the control socket. Raises StartupError (call
        close() then: it closes what was opened)."""
        cfg = self.cfg
        log.info(
            "daemon_starting",
            version=__version__,
            pid=os.getpid(),
            config=self.config_path,
            simulate=cfg.simulate,
            dry_run=cfg.dry_run,
        )
        if cfg.metrics.enabled:
            try:
                server = await asyncio.to_thread(serve, self.metrics, cfg.metrics.address)
            except OSError as e:
                raise StartupError(
                    f"cannot serve metrics on {cfg.metrics.address}: {e.strerror or e}"
                ) from None
            self._resources.push_async_callback(_close_metrics_server, server)
            log.info("metrics_listening", address=f"{server.host}:{server.port}")
        problems = preflight_problems(cfg)
        if problems:
            raise StartupError("; ".join(problems))
        parts = build_parts(
            cfg, self.clock, self.metrics, handlers=self.api.handlers(), on_cycle=self._on_cycle
        )
        self.parts = parts
        self._resources.push_async_callback(_close_parts, parts)
        try:  # the first load of the policies, off the event loop
            await read_off_loop(parts.store.reload)
        except TimeoutError:
            raise StartupError(
                f"policy directory {cfg.policy_dir}: not read within {READ_TIMEOUT_S:g}s"
            ) from None
        writable = not parts.journal_error and parts.journal.probe()
        self.metrics.set("journal_writable", 1.0 if writable else 0.0)
        if not writable:
            log.error(
                "journal_unwritable",
                state_dir=cfg.state_dir,
                error=parts.journal_error or "write probe failed",
                consequence="no migration will start until the state directory is writable",
            )
        try:
            await parts.control.start()
        except (OSError, KeyError) as e:
            raise StartupError(f"control socket {cfg.control.socket}: {e}") from None

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. Returns the exit code."""
        try:
            await self.start()
        except StartupError as e:
            log.error("startup_failed", error=str(e))
            await self.close()
            raise
        parts = self.parts
        self._install_signals()
        code = 0
        try:
            async with asyncio.TaskGroup() as tg:
                forever = [
                    tg.create_task(parts.telemetry.run(), name="telemetry"),
                    tg.create_task(parts.watcher.run(), name="policy-watch"),
                    tg.create_task(self.watchdog.run(), name="watchdog"),
                    tg.create_task(self._hotspot_watch(), name="hotspot-watch"),
                ]
                tg.create_task(parts.control.serve_until(self._closing), name="control")
                self._brain = tg.create_task(self._run_brain(), name="control-loop")
                self.phase = "running"
                self.metrics.set("daemon_ready", 1.0)
                self.notifier.ready()
                self.notifier.status("serving; reconciling the journal")
                log.info("daemon_ready", control_socket=self.cfg.control.socket)
                await self._stop.wait()
                await self._shutdown()
                for t in forever:
                    t.cancel()
                self._closing.set()
        except* Exception as eg:
            for exc in eg.exceptions:
                log.error("daemon_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            code = 1
        finally:
            self._remove_signals()
            await self.close()
        log.info("daemon_stopped", exit_code=code)
        return code

    def request_stop(self) -> None:
        self._stop.set()

    async def _run_brain(self) -> None:
        executor = self.parts.executor
        self.phase = "reconciling"
        try:
            rep = await executor.reconcile()
            self.reconcile_report = rep.to_dict()
            if any(rep.to_dict().values()):
                log.info("journal_reconciled", **{k: len(v) for k, v in rep.to_dict().items()})
        except Exception as e:  # never start planning blind, never die on it either
            self.metrics.inc("errors_total", where="reconcile")
            log.error("reconcile_failed", error=f"{type(e).__name__}: {e}")
        if self._stop_planning.is_set():
            return
        self.phase = "running"
        self._loop_started = self.clock.monotonic()
        self.notifier.status("serving; planning")
        await self.parts.loop.run(self._stop_planning)

    async def _shutdown(self) -> None:
        executor = self.parts.executor
        self.phase = "stopping"
        self.metrics.set("daemon_ready", 0.0)
        self.notifier.stopping()
        n = len(executor.in_flight())
        deadline = self.cfg.shutdown_deadline_s
        self.notifier.status(f"stopping: {n} migrations in flight, deadline {deadline:g}s")
        log.info("daemon_stopping", in_flight=n, deadline_s=deadline)
        self._stop_planning.set()
        executor.request_stop()
        brain = self._brain
        if brain is None or brain.done():
            return
        done, _ = await asyncio.wait({brain}, timeout=deadline)
        if done:
            return
        log.warning(
            "shutdown_deadline_reached", in_flight=len(executor.in_flight()), deadline_s=deadline
        )
        # only the executor acts on the hypervisors (ports.Hypervisor)
        await executor.abort_all("shutdown deadline")
        done, _ = await asyncio.wait({brain}, timeout=ABORT_GRACE_S)
        if not done:
            log.error("shutdown_forced", in_flight=len(executor.in_flight()))
            brain.cancel()
            # wait, never `await brain` under suppress(CancelledError): that would also swallow
            # a cancel of this task (the TaskGroup collects the brain's outcome)
            await asyncio.wait({brain}, timeout=ABORT_GRACE_S)

    async def close(self) -> None:
        """Close what start() opened (safe to call twice, and after a failed start)."""
        await self._resources.aclose()
        self.notifier.close()

    # -- signals ----------------------------------------------------------------------------
    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_term, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_term, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(s)

    def _on_term(self, name: str) -> None:
        log.info("signal_received", signal=name)
        self._stop.set()

    def _on_hup(self) -> None:
        log.info("signal_received", signal="SIGHUP")
        self._spawn(self.reload())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    # -- reload -----------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """SIGHUP: re-read the config file (live fields only) and the policies."""
        parts = self.parts
        async with self._reload_lock:
            self.notifier.reloading()
            out: dict[str, Any] = {"config": None, "policy": None}
            try:
                if self.config_path:
                    done = reload_config(self.config_path, self.overrides, self.cfg, parts)
                    self.cfg = done.config
                    out["config"] = done.report
                try:
                    result = await read_off_loop(parts.watcher.reload_now)
                    self.notifier.status(result.summary()[:200])
                except TimeoutError:
                    self.metrics.inc("errors_total", where="policy_reload")
                    log.error("policy_read_timeout", timeout_s=READ_TIMEOUT_S)
                out["policy"] = reload_summary(parts.store)
            finally:
                self.notifier.reloaded()
            parts.loop.wake()
            return out

    @property
    def last_reload(self) -> dict[str, Any]:
        """The last policy reload attempt (the store's: watcher, SIGHUP and start alike)."""
        return reload_summary(self.parts.store)

    # -- health -----------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """Is the control loop doing its job? (`daemon.health.health_verdict`)"""
        brain = self._brain
        progress = Progress(
            phase=self.phase,
            brain_stopped=brain is not None and brain.done(),
            loop_started=self._loop_started,
        )
        return health_verdict(
            self.cfg, self.parts.loop, self.parts.executor, progress, self.clock.monotonic()
        )

    def hot_hosts(self) -> set[str]:
        """Active hosts above the policy's high watermark right now (weighted load)."""
        return hot_hosts(self.parts.operator_view(), self.parts.store.current())

    async def _hotspot_watch(self) -> None:
        """Plan early when a host becomes a hotspot (between planning intervals)."""
        period = max(1.0, min(10.0, self.cfg.intervals.plan_s / 4))
        seen: set[str] = set()
        while True:
            await self.clock.sleep(period)
            if self.phase != "running":
                continue
            try:
                hot = self.hot_hosts()
            except Exception as e:  # a bad snapshot must not kill the daemon
                self.metrics.inc("errors_total", where="hotspot_watch")
                log.error("hotspot_watch_failed", error=f"{type(e).__name__}: {e}")
                continue
            new = hot - seen
            if new:
                for h in sorted(new):
                    log.info("hotspot_detected", host=h)
                self.parts.loop.wake()
            seen = hot

    # -- cycles -----------------------------------------------------------------------------
    def _on_cycle(self, report: CycleReport) -> None:
        parts = self.parts
        if report.status != "error":
            self.metrics.set("loop_last_cycle_timestamp_seconds", time.time())
        self.decisions.appendleft(decision(report))
        flights = len(parts.executor.in_flight())
        self.notifier.status(
            f"cycle {report.number}: {report.status}"
            + (f" ({report.detail})" if report.detail else "")
            + f"; policy {report.policy or '-'}; drained {len(parts.intent.drained)}"
            + f"; in flight {flights}"
        )
        self._expire_move_back()

    def _expire_move_back(self) -> None:
        parts = self.parts
        intent = parts.intent
        if not intent.move_back:
            return
        where = {v.name: v.host for v in parts.telemetry.current().vms}
        done = finished_move_backs(intent, where, self.clock.now())
        for vm in done:
            del intent.move_back[vm]
        if done:
            parts.drain_file.save(intent)


def decision(report: CycleReport) -> dict[str, Any]:
    """One entry of the status document's `decisions`: what a cycle decided and did."""
    out: dict[str, Any] = {
        "cycle": report.number,
        "at": report.at,
        "status": report.status,
        "detail": report.detail,
        "policy": report.policy,
        "imbalance": report.imbalance,
    }
    if report.plan is not None:
        out["moves"] = [m.to_dict() for m in report.plan.migrations]
        out["explain"] = report.plan.explain()
        out["notes"] = list(report.plan.stats.notes)
    ex = report.execution
    if ex is not None and hasattr(ex, "to_dict"):
        out["execution"] = ex.to_dict()
    return out


async def _close_metrics_server(server: MetricsServer) -> None:
    await asyncio.to_thread(server.close)


async def _close_parts(parts: Parts) -> None:
    await parts.control.close()
    closer = getattr(parts.hypervisor, "close", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()
    with contextlib.suppress(Exception):
        parts.journal.close()
