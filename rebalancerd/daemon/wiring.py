"""The composition root: builds the daemon's parts from its config.

``build_parts`` returns a frozen ``Parts`` (``SimulatedParts`` with ``simulate: true``, which also
holds the simulated cluster) in which every part exists: telemetry, hypervisor, journal, policy
store and watcher, executor, control loop, operator intent and the control server (not yet
bound). Real mode reads the inventory and talks MQTT and libvirt; simulated mode runs an
in-process cluster built from ``sim.snapshot`` or ``sim.hosts``/``sim.vms_per_host``.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rebalancerd.adapters.metrics import PrometheusMetrics
from rebalancerd.adapters.mqtt import MqttConfigError, MqttStream
from rebalancerd.control.server import ControlServer, Handler
from rebalancerd.daemon.config import DaemonConfig
from rebalancerd.daemon.intent import DrainFile, Intent, apply_intent, intent_host_states
from rebalancerd.daemon.loop import ControlLoop, CycleReport
from rebalancerd.daemon.policy_source import PolicyStore, PolicyWatcher, make_store
from rebalancerd.domain.model import ClusterRules, ClusterSnapshot, Host, HostState, Vm
from rebalancerd.execution.adaptive import AdaptiveConcurrency
from rebalancerd.execution.executor import Executor
from rebalancerd.execution.journal import Journal, JournalError
from rebalancerd.execution.power import PowerManager
from rebalancerd.files import load_snapshot
from rebalancerd.ports import Clock, Hypervisor, PowerDriver, TelemetrySource
from rebalancerd.sim.cluster import LoadModel, SimCluster, SimTelemetry, SimVm
from rebalancerd.snapshot import SnapshotError
from rebalancerd.telemetry.collector import Collector, CollectorSettings
from rebalancerd.telemetry.inventory import (
    Inventory,
    InventoryError,
    inventory_from_mapping,
    load_inventory,
)
from rebalancerd.telemetry.schema import subscription_topics


class StartupError(Exception):
    """The daemon cannot start; one line."""


@dataclass(frozen=True, slots=True)
class Parts:
    """Everything the daemon runs, built and connected."""

    clock: Clock
    metrics: PrometheusMetrics
    telemetry: TelemetrySource
    hypervisor: Hypervisor
    journal: Journal
    journal_error: str
    """Why the state directory cannot hold the journal ("" = it can)."""
    store: PolicyStore
    watcher: PolicyWatcher
    executor: Executor
    power: PowerManager
    loop: ControlLoop
    intent: Intent
    drain_file: DrainFile
    control: ControlServer

    def operator_view(self) -> ClusterSnapshot:
        """The latest telemetry snapshot with the operator's intent applied."""
        snap = apply_intent(self.telemetry.current(), self.intent, self.clock.now())
        return self.power.apply(snap)


@dataclass(frozen=True, slots=True)
class SimulatedParts(Parts):
    """The parts of a daemon run against an in-process simulated cluster."""

    cluster: SimCluster


# ---------------------------------------------------------------------------------------------
# Settings from the config


def collector_settings(cfg: DaemonConfig) -> CollectorSettings:
    """The telemetry collector's settings from the config (raises ValueError if unusable)."""
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


def read_inventory(cfg: DaemonConfig) -> Inventory:
    """The inventory the config names (a file, or a mapping written inline)."""
    try:
        if isinstance(cfg.inventory, str):
            return load_inventory(cfg.inventory)
        return inventory_from_mapping(cfg.inventory)
    except InventoryError as e:
        raise StartupError(str(e)) from None


_REMOTE_SCHEMES = ("qemu+tcp", "qemu+tls", "qemu+ssh", "qemu+libssh2")


def peer_uri(libvirt_uri: str, migration_uri: str | None) -> str:
    """The URI a source libvirtd dials to reach this host's libvirtd for a peer-to-peer migration
    (the control connection, not the memory copy): the host's own ``libvirt_uri`` when it names a
    remote host (``qemu+tls://hv1.example/system``); for a local-only ``libvirt_uri`` (a unix
    socket, as in the lab) it is derived from the ``migration_uri`` address (``tcp://ADDR`` ->
    ``qemu+tcp://ADDR/system``, ``tls://ADDR`` -> ``qemu+tls://ADDR/system``)."""
    scheme, _, rest = libvirt_uri.partition("://")
    if scheme in _REMOTE_SCHEMES and rest.split("/", 1)[0]:
        return libvirt_uri
    if migration_uri:
        mscheme, _, mrest = migration_uri.partition("://")
        addr = mrest.split("/", 1)[0]
        if mscheme in ("tcp", "tls") and addr:
            return f"qemu+{mscheme}://{addr}/system"
    return libvirt_uri


def hypervisor_hosts(inventory: Inventory) -> dict[str, tuple[str, str, str | None]]:
    """{host: (control URI, peer URI, migration URI)} for `LibvirtHypervisor`: the inventory's
    ``migration_uri`` is the memory copy's destination (``VIR_MIGRATE_PARAM_URI``), never the
    libvirtd control URI."""
    return {
        h.name: (h.libvirt_uri, peer_uri(h.libvirt_uri, h.migration_uri), h.migration_uri)
        for h in inventory
    }


def open_journal(state_dir: str) -> tuple[Journal, str]:
    """The journal, or (if the state directory cannot be used at all) an in-memory journal that
    refuses every write, so the executor refuses to migrate; plus the reason ("" if none)."""
    try:
        return Journal.open(state_dir), ""
    except JournalError as e:
        j = Journal.open(":memory:")
        with contextlib.suppress(sqlite3.Error):
            j._conn.execute("PRAGMA query_only = ON")
        return j, str(e)


def power_drivers(cfg: DaemonConfig, inventory: Inventory | None) -> dict[str, PowerDriver]:
    """host -> power driver, from the inventory hosts' `power:` and the config's `power.hosts`
    (the inventory wins). StartupError (one line) on a bad entry or an unknown host."""
    from rebalancerd.adapters.power_config import PowerConfigError, driver_for, parse_power_spec

    specs: dict[str, Any] = dict(cfg.power.hosts)
    if inventory is not None:
        known = {h.name for h in inventory}
        unknown = sorted(set(specs) - known)
        if unknown:
            raise StartupError(f"power.hosts: not in the inventory: {', '.join(unknown[:5])}")
        specs.update({h.name: h.power for h in inventory if h.power is not None})
    try:
        return {h: driver_for(h, parse_power_spec(h, d)) for h, d in sorted(specs.items())}
    except PowerConfigError as e:
        raise StartupError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Telemetry and hypervisor: real or simulated


def simulated_cluster(cfg: DaemonConfig, clock: Clock) -> tuple[SimTelemetry, SimCluster]:
    sc = cfg.sim
    if sc.snapshot:
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
                dirty_rate_mib_s=v.dirty_mib_s,
                tags=v.tags,
            ),
        )
    telemetry = SimTelemetry(cluster, interval_s=min(5.0, cfg.intervals.plan_s))
    return telemetry, cluster


def real_sources(
    cfg: DaemonConfig, clock: Clock, metrics: PrometheusMetrics
) -> tuple[Collector, Hypervisor, dict[str, PowerDriver]]:
    """The MQTT telemetry collector and the libvirt hypervisor for the inventory's hosts."""
    # imported here so that a simulated daemon runs without the libvirt bindings installed
    from rebalancerd.adapters.libvirt import LibvirtHypervisor

    inventory = read_inventory(cfg)
    if len(inventory) == 0:
        raise StartupError("inventory: no hosts")
    drivers = power_drivers(cfg, inventory)
    try:
        settings = collector_settings(cfg)
    except ValueError as e:
        raise StartupError(f"telemetry settings: {e}") from None
    try:
        cfg.broker.client_kwargs()  # TLS files and password file readable?
    except MqttConfigError as e:
        raise StartupError(f"broker: {e}") from None
    stream = MqttStream(
        cfg.broker,
        subscription_topics(cfg.cluster),
        metrics,
        max_payload_bytes=settings.max_payload_bytes,
    )
    collector = Collector(inventory, clock, metrics, settings, stream)
    hypervisor = LibvirtHypervisor(hypervisor_hosts(inventory))
    return collector, hypervisor, drivers


# ---------------------------------------------------------------------------------------------
# Everything


def build_parts(
    cfg: DaemonConfig,
    clock: Clock,
    metrics: PrometheusMetrics,
    *,
    handlers: Mapping[str, Handler],
    on_cycle: Callable[[CycleReport], None],
) -> Parts:
    """All parts, connected: `handlers` serve the control socket, `on_cycle` sees each cycle's
    report. Raises StartupError (nothing is left open then)."""
    cluster: SimCluster | None = None
    telemetry: TelemetrySource
    hypervisor: Hypervisor
    drivers: dict[str, PowerDriver] = {}
    if cfg.simulate:
        telemetry, cluster = simulated_cluster(cfg, clock)
        hypervisor = cluster.hypervisor
    else:
        telemetry, hypervisor, drivers = real_sources(cfg, clock, metrics)
    journal, journal_error = open_journal(cfg.state_dir)
    drain_file = DrainFile(cfg.state_dir)
    intent, _whole = drain_file.load(metrics)
    metrics.set("drained_hosts", len(intent.drained))
    store = make_store(cfg.policy_dir, metrics, clock, load=False)  # Daemon.start loads it
    watcher = PolicyWatcher(store, clock, interval_s=2.0)

    from rebalancerd.adapters.power_config import hook_driver

    executor_ref: list[Executor] = []

    def busy_hosts() -> set[str]:
        return {h for f in executor_ref[0].in_flight() for h in (f.source, f.target)}

    power = PowerManager(
        drivers,
        hypervisor,
        clock,
        metrics,
        journal,
        dry_run=cfg.dry_run,
        agent_states=telemetry.host_states,
        hook_driver=hook_driver,
        busy_hosts=busy_hosts,
    )

    def operator_host_states() -> Mapping[str, HostState]:
        states = intent_host_states(telemetry.host_states(), intent)
        held = power.overlay()
        return {**states, **held} if held else states

    def with_intent(snap: ClusterSnapshot) -> ClusterSnapshot:
        return power.apply(apply_intent(snap, intent, clock.now()))

    executor = Executor(
        hypervisor,
        clock,
        metrics,
        journal,
        dry_run=cfg.dry_run,
        host_states=operator_host_states,
        adaptive=adaptive_concurrency(cfg),
        policy_provider=store.current,
        power=drivers,
        agent_status=telemetry.agent_status if isinstance(telemetry, Collector) else None,
    )
    executor_ref.append(executor)
    loop = ControlLoop(
        telemetry,
        store.current,
        executor,
        clock,
        metrics,
        interval_s=cfg.intervals.plan_s,
        planner_time_limit_s=cfg.planner.time_limit_s,
        max_data_age_s=cfg.intervals.max_data_age_s,
        seed=cfg.planner.seed,
        overlay=with_intent,
        on_cycle=on_cycle,
        backoff=executor.backoff_remaining,
        power=power,
    )
    control = ControlServer(
        cfg.control.socket,
        handlers,
        metrics,
        group=cfg.control.group,
        mode=cfg.control.mode if cfg.control.group else 0o600,
    )
    common: dict[str, Any] = dict(
        clock=clock,
        metrics=metrics,
        telemetry=telemetry,
        hypervisor=hypervisor,
        journal=journal,
        journal_error=journal_error,
        store=store,
        watcher=watcher,
        executor=executor,
        power=power,
        loop=loop,
        intent=intent,
        drain_file=drain_file,
        control=control,
    )
    if cluster is not None:
        return SimulatedParts(**common, cluster=cluster)
    return Parts(**common)
