"""The daemon: wires telemetry, policies, the control loop, the executor, the control API, the
/metrics endpoint and the systemd notify protocol together, and runs them in one TaskGroup.

Life cycle
----------
start-up   bind /metrics and the control socket, open the journal (a state directory that cannot
           be written -> the daemon runs but refuses to migrate, ``journal_writable`` = 0), load
           the policies, send ``READY=1``; then reconcile the journal (moves interrupted by a
           crash) before the first planning cycle.
running    the loop plans every ``intervals.plan_s`` and early on a drain request; ``WATCHDOG=1``
           is sent only while the loop is healthy (see ``Daemon.health``).
SIGHUP     ``RELOADING=1``: re-read the config file (live: log, intervals, planner, shutdown
           deadline, dry_run, control group; anything else is logged as needing a restart) and
           the policies (a broken policy file keeps the old policies), then ``READY=1``.
SIGTERM    ``STOPPING=1``: no new plan, no new migration; in-flight migrations may finish for
           ``shutdown_deadline_s`` seconds; after that they are aborted (the VM stays on its
           source) and the daemon exits 0.

Drains requested through the control API are kept in ``<state_dir>/drained.json`` so they
survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from rebalancerd import __version__
from rebalancerd import logging as rlog
from rebalancerd.adapters.clock import ScaledClock, SystemClock
from rebalancerd.adapters.metrics import MetricsServer, PrometheusMetrics, serve
from rebalancerd.adapters.systemd import (
    NullNotifier,
    SystemdNotifier,
    from_env,
    watchdog_interval_s,
)
from rebalancerd.config import DaemonConfig, diff, load
from rebalancerd.control.server import ControlRequestError, ControlServer
from rebalancerd.domain.load import host_loads
from rebalancerd.domain.model import ClusterRules, ClusterSnapshot, Host, HostState, Pin
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal, JournalError
from rebalancerd.loop import ControlLoop, CycleReport, policy_weights
from rebalancerd.policy.store import PolicyStore
from rebalancerd.policy.watch import PolicyWatcher, make_store
from rebalancerd.ports import Clock, Hypervisor, HypervisorError, TelemetrySource
from rebalancerd.snapshot import to_dict as snapshot_to_dict

if TYPE_CHECKING:
    from rebalancerd.telemetry.collector import CollectorSettings

log = structlog.get_logger("rebalancerd.daemon")

DRAINED_FILE = "drained.json"
MOVE_BACK_TTL_S = 3600.0
"""How long after an undrain --move-back the planner is asked to bring the VMs home."""
MOVE_BACK_WEIGHT = 50.0
ABORT_GRACE_S = 30.0
"""After the shutdown deadline: how long aborted migrations get to settle before we exit."""
DECISIONS_KEPT = 20


class StartupError(Exception):
    """The daemon cannot start; one line."""


@dataclass
class Drain:
    since: float
    vms: dict[str, str] = field(default_factory=dict)
    """VM -> host it ran on when the drain was requested (for undrain --move-back)."""


@dataclass
class MoveBack:
    home: str
    until: float


# ---------------------------------------------------------------------------------------------
# Building the parts


def _load_inventory(cfg: DaemonConfig) -> Any:
    from rebalancerd.telemetry.inventory import (
        InventoryError,
        inventory_from_mapping,
        load_inventory,
    )

    try:
        if isinstance(cfg.inventory, str):
            return load_inventory(cfg.inventory)
        return inventory_from_mapping(cfg.inventory)
    except InventoryError as e:
        raise StartupError(str(e)) from None


def peer_uri(libvirt_uri: str, migration_uri: str | None) -> str:
    """The URI a source libvirtd uses to reach this host's libvirtd for a peer-to-peer migration:
    derived from the inventory's ``migration_uri`` (``tcp://ADDR`` -> ``qemu+tcp://ADDR/system``,
    ``tls://ADDR`` -> ``qemu+tls://ADDR/system``), else the host's own ``libvirt_uri``."""
    if migration_uri:
        scheme, _, rest = migration_uri.partition("://")
        addr = rest.split("/", 1)[0]
        if scheme in ("tcp", "tls") and addr:
            return f"qemu+{scheme}://{addr}/system"
    return libvirt_uri


def _sim_parts(cfg: DaemonConfig, clock: Clock) -> tuple[TelemetrySource, Hypervisor, Any]:
    import random

    from rebalancerd.domain.model import Vm
    from rebalancerd.sim.cluster import LoadModel, SimCluster, SimTelemetry, SimVm

    sc = cfg.sim
    if sc.snapshot:
        from rebalancerd.snapshot import SnapshotError
        from rebalancerd.snapshot import load as load_snapshot

        try:
            snap = load_snapshot(sc.snapshot)
        except SnapshotError as e:
            raise StartupError(str(e)) from None
        hosts = list(snap.hosts)
        vms: list[Vm] = list(snap.vms)
        rules = snap.rules
    else:
        rng = random.Random(sc.seed)
        hosts = [Host(f"sim{i + 1:02d}", cores=16, memory_mib=65536) for i in range(sc.hosts)]
        vms = []
        for h in hosts:
            for j in range(sc.vms_per_host):
                vms.append(
                    Vm(
                        f"{h.name}-vm{j + 1}",
                        h.name,
                        vcpus=2,
                        memory_mib=2048,
                        cpu_used_mc=rng.randrange(200, 1500),
                    )
                )
        rules = ClusterRules()
    cluster = SimCluster(clock, hosts, rules)
    for v in vms:
        cluster.add_vm(
            v.host,
            SimVm(
                v.name,
                v.vcpus,
                v.memory_mib,
                LoadModel(base_mc=max(1, v.cpu_used_mc), amplitude=0.0),
                dirty_rate_mib_s=v.dirty_rate_mib_s,
                tags=v.tags,
            ),
        )
    telemetry = SimTelemetry(cluster, interval_s=min(5.0, cfg.intervals.plan_s))
    return telemetry, cluster.hypervisor, cluster


def _real_parts(
    cfg: DaemonConfig, clock: Clock, metrics: PrometheusMetrics
) -> tuple[TelemetrySource, Hypervisor, Any]:
    from rebalancerd.adapters.libvirt import LibvirtHypervisor
    from rebalancerd.adapters.mqtt import MqttConfigError, MqttStream
    from rebalancerd.telemetry.collector import Collector
    from rebalancerd.telemetry.schema import subscription_topics

    inventory = _load_inventory(cfg)
    if len(inventory) == 0:
        raise StartupError("inventory: no hosts")
    try:
        settings = collector_settings(cfg)
    except ValueError as e:
        raise StartupError(f"telemetry settings: {e}") from None
    try:
        cfg.broker.client_kwargs()  # TLS files and password file readable?
    except MqttConfigError as e:
        raise StartupError(f"broker: {e}") from None
    stream = MqttStream(cfg.broker, subscription_topics(cfg.cluster), metrics)
    collector = Collector(inventory, clock, metrics, settings, stream)
    hypervisor = LibvirtHypervisor(
        {h.name: (h.libvirt_uri, peer_uri(h.libvirt_uri, h.migration_uri)) for h in inventory}
    )
    return collector, hypervisor, inventory


def open_journal(state_dir: str) -> tuple[Journal, str | None]:
    """The journal, or (if the state directory cannot be used at all) an in-memory journal that
    refuses every write, so the executor refuses to migrate; plus the reason, if any."""
    try:
        return Journal.open(state_dir), None
    except JournalError as e:
        j = Journal.open(":memory:")
        with contextlib.suppress(sqlite3.Error):
            j._conn.execute("PRAGMA query_only = ON")
        return j, str(e)


# ---------------------------------------------------------------------------------------------
# The daemon


def collector_settings(cfg: DaemonConfig) -> CollectorSettings:
    """The telemetry collector's settings from the config (raises ValueError if unusable)."""
    from rebalancerd.telemetry.collector import CollectorSettings

    t = cfg.telemetry
    return CollectorSettings(
        cluster=cfg.cluster,
        stale_after_s=cfg.intervals.stale_after_s,
        max_clock_skew_s=cfg.telemetry_max_clock_skew_s,
        history_len=t.history_len,
        ewma_alpha=t.ewma_alpha,
        rate_per_s=t.rate_per_s,
        rate_burst=t.rate_burst,
        max_vms_per_host=t.max_vms_per_host,
        max_payload_bytes=t.max_payload_bytes,
    )


def adaptive_concurrency(cfg: DaemonConfig) -> AdaptiveConcurrency:
    """The executor's adaptive concurrency controller, from the config's `adaptive` section."""
    a = cfg.adaptive
    return AdaptiveConcurrency(
        slow_start=a.slow_start,
        start_cap=a.start_cap,
        trigger_fraction=a.trigger_fraction,
        history_s=a.history_s,
    )


class Daemon:
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
        self.watchdog_s = watchdog_interval_s(env)
        self.metrics = PrometheusMetrics()
        self.clock: Clock = (
            ScaledClock(cfg.sim.speed) if cfg.simulate and cfg.sim.speed != 1.0 else SystemClock()
        )
        self.started_at = time.time()
        self.metrics_server: MetricsServer | None = None
        self.control: ControlServer | None = None
        self.telemetry: TelemetrySource | None = None
        self.hypervisor: Hypervisor | None = None
        self.journal: Journal | None = None
        self.journal_error: str | None = None
        self.store: PolicyStore | None = None
        self.watcher: PolicyWatcher | None = None
        self.executor: Executor | None = None
        self.loop: ControlLoop | None = None
        self.sim: Any = None
        self.drained: dict[str, Drain] = {}
        self.move_back: dict[str, MoveBack] = {}
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self.phase = "starting"
        self.reconcile_report: dict[str, Any] | None = None
        self.last_reload: dict[str, Any] | None = None
        self._stop_planning = asyncio.Event()
        self._closing = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._cycle_started: float | None = None
        self._loop_started: float | None = None
        self._brain: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._watchdog_ok = True
        self.watchdog_ticks = 0

    # -- start-up ---------------------------------------------------------------------------
    async def start(self) -> None:
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
                self.metrics_server = await asyncio.to_thread(
                    serve, self.metrics, cfg.metrics.address
                )
            except OSError as e:
                raise StartupError(
                    f"cannot serve metrics on {cfg.metrics.address}: {e.strerror or e}"
                ) from None
            log.info(
                "metrics_listening",
                address=f"{self.metrics_server.host}:{self.metrics_server.port}",
            )
        if cfg.simulate:
            self.telemetry, self.hypervisor, self.sim = _sim_parts(cfg, self.clock)
        else:
            self.telemetry, self.hypervisor, self.sim = _real_parts(cfg, self.clock, self.metrics)
        self.journal, self.journal_error = open_journal(cfg.state_dir)
        writable = self.journal_error is None and self.journal.probe()
        self.metrics.set("journal_writable", 1.0 if writable else 0.0)
        if not writable:
            log.error(
                "journal_unwritable",
                state_dir=cfg.state_dir,
                error=self.journal_error or "write probe failed",
                consequence="no migration will start until the state directory is writable",
            )
        self._load_drains()
        self.store = make_store(cfg.policy_dir, self.metrics, self.clock)
        self.last_reload = self._reload_summary()
        self.watcher = PolicyWatcher(self.store, self.clock, interval_s=2.0)
        self.executor = Executor(
            self.hypervisor,
            self.clock,
            self.metrics,
            self.journal,
            dry_run=cfg.dry_run,
            fresh=self._fresh,
            adaptive=adaptive_concurrency(cfg),
        )
        self.loop = ControlLoop(
            self.telemetry,
            self.store.current,
            self.executor,
            self.clock,
            self.metrics,
            interval_s=cfg.intervals.plan_s,
            planner_time_limit_s=cfg.planner.time_limit_s,
            max_data_age_s=cfg.intervals.max_data_age_s,
            seed=cfg.planner.seed,
            overlay=self._overlay_cycle,
            on_cycle=self._on_cycle,
            backoff=self.executor.backoff_remaining,
        )
        self.control = ControlServer(
            cfg.control.socket,
            self._handlers(),
            self.metrics,
            group=cfg.control.group,
            mode=cfg.control.mode if cfg.control.group else 0o600,
        )
        try:
            await self.control.start()
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
        self._install_signals()
        code = 0
        try:
            async with asyncio.TaskGroup() as tg:
                assert self.telemetry is not None and self.watcher is not None
                assert self.control is not None
                forever = [
                    tg.create_task(self.telemetry.run(), name="telemetry"),
                    tg.create_task(self.watcher.run(), name="policy-watch"),
                    tg.create_task(self._watchdog(), name="watchdog"),
                    tg.create_task(self._hotspot_watch(), name="hotspot-watch"),
                ]
                tg.create_task(self.control.serve_until(self._closing), name="control")
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
        assert self.executor is not None and self.loop is not None
        self.phase = "reconciling"
        try:
            rep = await self.executor.reconcile()
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
        await self.loop.run(self._stop_planning)

    async def _shutdown(self) -> None:
        assert self.executor is not None and self.hypervisor is not None
        self.phase = "stopping"
        self.metrics.set("daemon_ready", 0.0)
        self.notifier.stopping()
        n = len(self.executor.in_flight())
        deadline = self.cfg.shutdown_deadline_s
        self.notifier.status(f"stopping: {n} migrations in flight, deadline {deadline:g}s")
        log.info("daemon_stopping", in_flight=n, deadline_s=deadline)
        self._stop_planning.set()
        self.executor.request_stop()
        brain = self._brain
        if brain is None or brain.done():
            return
        done, _ = await asyncio.wait({brain}, timeout=deadline)
        if done:
            return
        flights = self.executor.in_flight()
        log.warning("shutdown_deadline_reached", in_flight=len(flights), deadline_s=deadline)
        for f in flights:
            try:
                await self.hypervisor.abort(f.vm, f.source)
                log.warning(
                    "migration_abort_requested",
                    vm=f.vm,
                    host=f.source,
                    target=f.target,
                    migration_id=f.migration_id,
                    why="shutdown deadline",
                )
            except (HypervisorError, Exception) as e:
                log.error(
                    "migration_abort_failed", vm=f.vm, migration_id=f.migration_id, error=str(e)
                )
        done, _ = await asyncio.wait({brain}, timeout=ABORT_GRACE_S)
        if not done:
            log.error("shutdown_forced", in_flight=len(self.executor.in_flight()))
            brain.cancel()
            # wait, never `await brain` under suppress(CancelledError): that would also swallow
            # a cancel of this task (the TaskGroup collects the brain's outcome)
            await asyncio.wait({brain}, timeout=ABORT_GRACE_S)

    async def close(self) -> None:
        if self.control is not None:
            await self.control.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)
            self.metrics_server = None
        closer = getattr(self.hypervisor, "close", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
        if self.journal is not None:
            with contextlib.suppress(Exception):
                self.journal.close()
            self.journal = None
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
        assert self.watcher is not None and self.loop is not None
        async with self._reload_lock:
            self.notifier.reloading()
            out: dict[str, Any] = {"config": None, "policy": None}
            try:
                if self.config_path:
                    out["config"] = self._reload_config()
                result = await asyncio.to_thread(self.watcher.reload_now)
                self.last_reload = self._reload_summary()
                out["policy"] = self.last_reload
                self.notifier.status(result.summary()[:200])
            finally:
                self.notifier.reloaded()
            self.loop.wake()
            return out

    def _reload_config(self) -> dict[str, Any]:
        from rebalancerd.config import ConfigError

        assert self.config_path is not None
        try:
            new = load(self.config_path)
            if self.overrides:
                new = new.model_copy(update=self.overrides)
        except ConfigError as e:
            log.error("config_reload_failed", error=str(e), kept="previous config")
            return {"ok": False, "error": str(e)}
        live, restart = diff(self.cfg, new)
        if restart:
            log.warning("config_change_needs_restart", fields=restart)
        if live:
            self._apply_live(new)
            log.info("config_reloaded", fields=live)
        # keep the old values of restart-only fields: they are still what runs
        self.cfg = self.cfg.model_copy(
            update={
                "intervals": new.intervals,
                "planner": new.planner,
                "shutdown_deadline_s": new.shutdown_deadline_s,
                "log": new.log,
                "dry_run": new.dry_run,
                "control": self.cfg.control.model_copy(update={"group": new.control.group}),
            }
        )
        return {"ok": True, "applied": live, "needs_restart": restart}

    def _apply_live(self, new: DaemonConfig) -> None:
        assert self.loop is not None and self.executor is not None
        self.loop.interval_s = new.intervals.plan_s
        self.loop.max_data_age_s = new.intervals.max_data_age_s
        self.loop.planner_time_limit_s = new.planner.time_limit_s
        self.loop.seed = new.planner.seed
        self.executor.dry_run = new.dry_run
        if new.log != self.cfg.log:
            rlog.configure(new.log.level, new.log.format)
        if new.control.group != self.cfg.control.group and self.control is not None:
            try:
                self.control.set_group(new.control.group)
            except (KeyError, OSError) as e:
                log.error("control_group_change_failed", error=str(e))

    def _reload_summary(self) -> dict[str, Any]:
        assert self.store is not None
        r = self.store.last_result
        if r is None:
            return {"ok": False, "summary": "never loaded"}
        return {
            "ok": r.ok,
            "summary": r.summary(),
            "files": list(r.files),
            "problems": [str(p) for p in r.problems[:20]],
            "at": time.time(),
        }

    # -- loop health and watchdog -----------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """Is the control loop doing its job? Drives WATCHDOG=1 (never a free-running timer).

        Unhealthy when the loop task died, or when no cycle finished without error for
        ``watchdog_grace_cycles + 1`` planning intervals plus twice the planner's time limit,
        except while migrations are in flight within their time budget (the executor bounds
        those). A stale-telemetry cycle is a healthy cycle: the broker being down is not a
        reason to restart the daemon.
        """
        if self.loop is None or self.executor is None:
            return False, "not started"
        brain = self._brain
        if brain is not None and brain.done():
            return False, "control loop stopped"
        if self.phase == "reconciling":
            return True, "reconciling"
        now = self.clock.monotonic()
        iv = self.cfg.intervals
        allowed = iv.plan_s * (iv.watchdog_grace_cycles + 1) + self.cfg.planner.time_limit_s * 2
        flights = self.executor.in_flight()
        if flights:
            wall = self.clock.now()
            for f in flights:
                budget = f.settings.time_budget_s if f.settings is not None else 300.0
                if wall - f.started <= budget + 120.0:
                    return True, "migrating"
            return False, "migration past its time budget"
        last = self.loop.state.last_ok_monotonic
        ref = last if last is not None else self._loop_started
        if ref is None:
            return True, "starting"
        if last is None:
            allowed += 30.0  # the first cycle also imports and warms up the planner
        if self.loop.busy and self._cycle_started is not None:
            ref = max(ref, self._cycle_started)
        age = now - ref
        if age > allowed:
            why = self.loop.state.last_error or "no cycle finished"
            return False, f"no healthy cycle for {age:.0f}s ({why})"
        return True, "ok"

    async def _watchdog(self) -> None:
        period = self.watchdog_s / 2 if self.watchdog_s else 5.0
        period = max(0.05, min(period, 30.0))
        while True:
            self.watchdog_ticks += 1
            ok, why = self.health()
            if ok:
                if self.watchdog_s:
                    self.notifier.watchdog()
                if not self._watchdog_ok:
                    log.info("loop_healthy_again")
            elif self._watchdog_ok:
                log.error("loop_unhealthy", reason=why, watchdog_s=self.watchdog_s)
                self.notifier.status(f"unhealthy: {why}")
            self._watchdog_ok = ok
            await asyncio.sleep(period)

    def hot_hosts(self) -> set[str]:
        """Active hosts above the policy's high watermark right now (weighted load)."""
        assert self.telemetry is not None and self.store is not None
        policy = self.store.current()
        snap = self.overlay(self.telemetry.current())
        w = policy_weights(policy)
        high = policy.targets.high_watermark
        states = {h.name: h.state for h in snap.hosts}
        return {
            name
            for name, hl in host_loads(snap).items()
            if states.get(name) is HostState.ACTIVE and hl.weighted(w) > high
        }

    async def _hotspot_watch(self) -> None:
        """Plan early when a host becomes a hotspot (between planning intervals)."""
        period = max(1.0, min(10.0, self.cfg.intervals.plan_s / 4))
        seen: set[str] = set()
        while True:
            await self.clock.sleep(period)
            if self.loop is None or self.phase != "running":
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
                self.loop.wake()
            seen = hot

    # -- cycles -----------------------------------------------------------------------------
    def _on_cycle(self, report: CycleReport) -> None:
        if report.status != "error":
            self.metrics.set("loop_last_cycle_timestamp_seconds", time.time())
        d = self._decision(report)
        self.decisions.appendleft(d)
        flights = len(self.executor.in_flight()) if self.executor else 0
        self.notifier.status(
            f"cycle {report.number}: {report.status}"
            + (f" ({report.detail})" if report.detail else "")
            + f"; policy {report.policy or '-'}; drained {len(self.drained)}; in flight {flights}"
        )
        self._expire_move_back()

    @staticmethod
    def _decision(report: CycleReport) -> dict[str, Any]:
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

    # -- live model overlay (drains, move-back) ----------------------------------------------
    def _overlay_cycle(self, snap: ClusterSnapshot) -> ClusterSnapshot:
        self._cycle_started = self.clock.monotonic()
        return self.overlay(snap)

    def _fresh(self) -> ClusterSnapshot:
        assert self.telemetry is not None
        return self.overlay(self.telemetry.current())

    def overlay(self, snap: ClusterSnapshot) -> ClusterSnapshot:
        """The telemetry snapshot with operator intent applied: drained hosts in maintenance,
        soft pins bringing VMs home after an undrain --move-back."""
        if self.drained:
            states = {
                h.name: HostState.MAINTENANCE
                for h in snap.hosts
                if h.name in self.drained and h.state is not HostState.STALE
            }
            if states:
                snap = snap.with_host_states(states)
        if self.move_back:
            now = self.clock.now()
            present = snap.vm_map()
            hosts = snap.host_map()
            pins = []
            for vm, mb in self.move_back.items():
                v = present.get(vm)
                h = hosts.get(mb.home)
                if v is None or h is None or mb.until < now or v.host == mb.home:
                    continue
                pins.append(Pin(vm, frozenset({mb.home}), hard=False, weight=MOVE_BACK_WEIGHT))
            if pins:
                snap = snap.with_rules(snap.rules.merged(ClusterRules(pins=tuple(pins))))
        return snap

    def _expire_move_back(self) -> None:
        if not self.move_back or self.telemetry is None:
            return
        now = self.clock.now()
        where = {v.name: v.host for v in self.telemetry.current().vms}
        done = [
            vm for vm, mb in self.move_back.items() if mb.until < now or where.get(vm) == mb.home
        ]
        for vm in done:
            del self.move_back[vm]
        if done:
            self._save_drains()

    def _drain_path(self) -> Path:
        return Path(self.cfg.state_dir) / DRAINED_FILE

    def _load_drains(self) -> None:
        p = self._drain_path()
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.error("drain_state_unreadable", path=str(p), error=str(e))
            return
        try:
            for host, d in doc.get("drained", {}).items():
                self.drained[str(host)] = Drain(float(d["since"]), dict(d.get("vms", {})))
            for vm, mb in doc.get("move_back", {}).items():
                self.move_back[str(vm)] = MoveBack(str(mb["home"]), float(mb["until"]))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            log.error("drain_state_invalid", path=str(p), error=str(e))
            return
        self.metrics.set("drained_hosts", len(self.drained))
        if self.drained:
            log.info("drains_restored", hosts=sorted(self.drained))

    def _save_drains(self) -> str | None:
        """Persist drains; returns an error text if they could not be saved."""
        p = self._drain_path()
        doc = {
            "drained": {h: {"since": d.since, "vms": d.vms} for h, d in self.drained.items()},
            "move_back": {v: {"home": m.home, "until": m.until} for v, m in self.move_back.items()},
        }
        tmp = p.with_name(p.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, p)
        except OSError as e:
            log.error("drain_state_not_saved", path=str(p), error=e.strerror or str(e))
            return f"not persisted ({e.strerror or e}): it will not survive a restart"
        return None

    # -- control API ------------------------------------------------------------------------
    def _handlers(
        self,
    ) -> dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]]:
        return {
            "ping": self._h_ping,
            "status": self._h_status,
            "drain": self._h_drain,
            "undrain": self._h_undrain,
            "snapshot": self._h_snapshot,
            "reload": self._h_reload,
        }

    async def _h_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid(), "version": __version__}

    def _host_arg(self, args: dict[str, Any]) -> str:
        assert self.telemetry is not None
        host = args.get("host")
        if not isinstance(host, str) or not host:
            raise ControlRequestError("missing host name")
        names = {h.name for h in self.telemetry.current().hosts}
        if host not in names:
            raise ControlRequestError(f"unknown host {host[:100]!r}: not in the inventory")
        return host

    async def _h_drain(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.telemetry is not None and self.loop is not None
        host = self._host_arg(args)
        snap = self.telemetry.current()
        if host in self.drained:
            return {"host": host, "drained": True, "already": True}
        others = [
            h for h in self.overlay(snap).hosts if h.name != host and h.state is HostState.ACTIVE
        ]
        if not others:
            raise ControlRequestError(f"refusing to drain {host}: no other active host")
        vms = {v.name: host for v in snap.vms if v.host == host}
        self.drained[host] = Drain(self.clock.now(), vms)
        for vm in vms:
            self.move_back.pop(vm, None)
        warning = self._save_drains()
        self.metrics.set("drained_hosts", len(self.drained))
        log.info("host_drain_requested", host=host, vms=len(vms))
        self.loop.wake()
        out: dict[str, Any] = {"host": host, "drained": True, "vms": sorted(vms)}
        if warning:
            out["warning"] = warning
        return out

    async def _h_undrain(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.loop is not None
        host = self._host_arg(args)
        move_back = bool(args.get("move_back", False))
        d = self.drained.pop(host, None)
        if d is None:
            return {"host": host, "drained": False, "already": True}
        homes: list[str] = []
        if move_back:
            until = self.clock.now() + MOVE_BACK_TTL_S
            for vm in d.vms:
                self.move_back[vm] = MoveBack(host, until)
                homes.append(vm)
        warning = self._save_drains()
        self.metrics.set("drained_hosts", len(self.drained))
        log.info("host_undrained", host=host, move_back=move_back, vms=len(homes))
        self.loop.wake()
        out: dict[str, Any] = {"host": host, "drained": False, "move_back": sorted(homes)}
        if warning:
            out["warning"] = warning
        return out

    async def _h_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.reload()

    async def _h_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.telemetry is not None
        snap = self.overlay(self.telemetry.current())
        return {
            "snapshot": snapshot_to_dict(snap),
            "data_age_s": _finite(self.telemetry.data_age_s()),
        }

    async def _h_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def status(self) -> dict[str, Any]:
        assert self.telemetry is not None and self.executor is not None and self.store is not None
        assert self.loop is not None
        snap = self.overlay(self.telemetry.current())
        loads = host_loads(snap)
        hosts = []
        for h in snap.hosts:
            hl = loads.get(h.name)
            hosts.append(
                {
                    "name": h.name,
                    "state": h.state.value,
                    "drained": h.name in self.drained,
                    "vms": hl.vms if hl else 0,
                    "cpu_load": round(hl.cpu, 4) if hl else None,
                    "memory_load": round(hl.memory, 4) if hl else None,
                }
            )
        flights = []
        for f in self.executor.in_flight():
            p = f.progress
            item: dict[str, Any] = {
                "migration_id": f.migration_id,
                "vm": f.vm,
                "source": f.source,
                "target": f.target,
                "elapsed_s": round(self.clock.now() - f.started, 1),
                "strategy": f.settings.strategy if f.settings else None,
            }
            if p is not None and p.data_total_mib > 0:
                done = 1.0 - p.data_remaining_mib / p.data_total_mib
                item["progress"] = round(min(max(done, 0.0), 1.0), 3)
                item["remaining_mib"] = round(p.data_remaining_mib, 1)
                item["iteration"] = p.iteration
            flights.append(item)
        policy = self.store.current()
        plan = self.loop.current_plan
        journal_error = self.journal_error
        if journal_error is None and self.journal is not None:
            journal_error = self.journal.probe_error()
        return {
            "daemon": {
                "version": __version__,
                "pid": os.getpid(),
                "phase": self.phase,
                "started_at": self.started_at,
                "uptime_s": round(time.time() - self.started_at, 1),
                "simulate": self.cfg.simulate,
                "dry_run": self.cfg.dry_run,
                "healthy": self.health()[0],
                "health": self.health()[1],
                "journal_writable": journal_error is None,
                "journal_error": journal_error,
                "cycles": self.loop.state.cycles,
                "reconcile": self.reconcile_report,
            },
            "telemetry": {"data_age_s": _finite(self.telemetry.data_age_s())},
            "policy": {
                "name": policy.name,
                "mode": policy.mode.value,
                "dry_run": policy.dry_run,
                "last_reload": self.last_reload,
                "policy": policy.model_dump(mode="json"),
            },
            "hosts": hosts,
            "drained": {h: {"since": d.since, "vms": len(d.vms)} for h, d in self.drained.items()},
            "plan": (plan.to_dict() | {"explain": plan.explain()}) if plan is not None else None,
            "in_flight": flights,
            "decisions": list(self.decisions),
        }


def _finite(x: float) -> float | None:
    return round(x, 3) if math.isfinite(x) else None
