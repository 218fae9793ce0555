"""Ports: the small Protocols the core talks to. Adapters (libvirt, MQTT, Prometheus, systemd)
and simulations implement them; tests use in-process fakes.

Nothing here does I/O; the value types are frozen dataclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from rebalancerd.domain.model import ClusterSnapshot, HostState

# --------------------------------------------------------------------------------------------
# Clock


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch (for windows, journals, telemetry timestamps)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (for durations, staleness, cooldowns)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


# --------------------------------------------------------------------------------------------
# Telemetry


@runtime_checkable
class TelemetrySource(Protocol):
    """Where the daemon's picture of the fleet comes from (MQTT collector, or a simulation)."""

    async def run(self) -> None:
        """Ingest until cancelled (a task in the daemon's TaskGroup)."""
        ...

    def current(self) -> ClusterSnapshot:
        """The latest model: inventory hosts (stale ones marked STALE) and the VMs seen on them."""
        ...

    def data_age_s(self) -> float:
        """Age in seconds of the oldest fresh host report the model relies on (inf if none)."""
        ...

    def host_states(self) -> Mapping[str, HostState]:
        """The current state of every known host, as `current()` would report it, without
        building the snapshot: looking one host up costs O(1)."""
        ...


Message = tuple[str, bytes]
"""One raw telemetry message: (topic, payload)."""


class MessageStream(Protocol):
    """Where raw telemetry messages come from (the MQTT adapter, or a test)."""

    def batches(self) -> AsyncIterator[list[Message]]: ...


# --------------------------------------------------------------------------------------------
# Hypervisor


@dataclass(frozen=True, slots=True)
class MigrationSettings:
    """How one live migration runs. Chosen per move by the executor within policy bounds."""

    max_downtime_ms: int = 300
    bandwidth_mib_s: int | None = None
    """None = unlimited."""
    auto_converge: bool = False
    postcopy_after_s: float | None = None
    """Switch to post-copy after this many seconds if not converged (None = never)."""
    time_budget_s: float = 300.0
    """Hard limit: when exceeded, post-copy if allowed, else abort (VM stays on the source)."""
    non_shared_disk: bool = False
    tls: bool = False
    strategy: str = "precopy"
    """Human label of the convergence strategy chosen (precopy, auto-converge, postcopy...)."""
    downtime_limit_ms: int | None = None
    """The class's max downtime: how far a non-converging pre-copy may step the downtime up
    (None = no step-up beyond `max_downtime_ms`)."""
    dirty_rate_known: bool = True
    """False when the VM's dirty rate was not measured: the class's default strategy is used."""


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    vm: str
    elapsed_s: float
    data_total_mib: float
    data_remaining_mib: float
    dirty_rate_mib_s: float
    iteration: int


@dataclass(frozen=True, slots=True)
class MigrationResult:
    ok: bool
    total_s: float = 0.0
    downtime_ms: float | None = None
    transferred_mib: float = 0.0
    postcopy: bool = False
    aborted: bool = False
    error: str | None = None
    downtime_step_ups: int = 0
    """How many times the max downtime was raised because a pre-copy pass did not converge."""
    final_max_downtime_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """What a hypervisor says about one VM on one host."""

    name: str
    running: bool
    persistent: bool
    migrating: bool = False


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What a host's hypervisor itself says it runs, right now (not what telemetry says): the
    executor confirms each move from it just before starting it."""

    domain_memory_mib: Mapping[str, int]
    """Every active domain (running, paused, or the incoming half of a migration) -> its memory
    (MiB)."""
    running: frozenset[str]
    """The guests that run here (an incoming migration half that has not taken over does not)."""
    free_memory_mib: int | None = None
    """The node's free memory (MiB) where the hypervisor reports it, else None."""


ProgressCallback = Callable[[MigrationProgress], None]


@runtime_checkable
class Hypervisor(Protocol):
    """Acts on the hypervisors of the inventory. Only the executor calls `migrate`/`abort`."""

    async def domains(self, host: str) -> dict[str, DomainInfo]:
        """Domains defined or running on a host. Raises HypervisorError if unreachable."""
        ...

    async def migrate(
        self,
        vm: str,
        source: str,
        target: str,
        settings: MigrationSettings,
        progress: ProgressCallback | None = None,
    ) -> MigrationResult:
        """Live-migrate and wait for the outcome. Never raises for a failed migration: the
        result says what happened. Raises HypervisorError only if the source is unreachable."""
        ...

    async def abort(self, vm: str, source: str) -> None: ...

    async def compatible(self, vm: str, source: str, target: str) -> str | None:
        """None if the guest can run on the target, else the reason (CPU model, devices)."""
        ...

    async def host_facts(self, host: str) -> HostFacts:
        """The domains the host's hypervisor runs, with their memory, and the node's free memory.
        Raises HypervisorError if unreachable."""
        ...


@runtime_checkable
class DomainStarter(Protocol):
    """Starting a guest from its definition on another host: how the executor restarts the HA
    VMs of a dead, fenced host. Only the executor calls it."""

    async def domain_xml(self, host: str, vm: str) -> str:
        """The guest's persistent definition (inactive XML, migratable: no host-local state).
        Raises HypervisorError if the host is unreachable or has no such guest."""
        ...

    async def start_domain(self, host: str, xml: str) -> None:
        """Define the guest persistently on `host` and start it. Raises HypervisorError."""
        ...


class HypervisorError(Exception):
    """A hypervisor could not be reached or refused an operation."""


# --------------------------------------------------------------------------------------------
# Metrics


@runtime_checkable
class MetricsSink(Protocol):
    """Names are the short names of rebalancerd.observability.METRICS (no prefix)."""

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None: ...

    def set(self, name: str, value: float, **labels: str) -> None: ...

    def observe(self, name: str, value: float, **labels: str) -> None: ...


# --------------------------------------------------------------------------------------------
# Service manager


@runtime_checkable
class ServiceNotifier(Protocol):
    """systemd's notify protocol, or nothing."""

    def ready(self) -> None: ...

    def status(self, text: str) -> None: ...

    def watchdog(self) -> None: ...

    def reloading(self) -> None: ...

    def reloaded(self) -> None: ...

    def stopping(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Host power (BMC: IPMI, Redfish; Wake-on-LAN; an operator's command)


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"
    """The driver cannot tell (Wake-on-LAN, a command hook without a status command)."""


class PowerError(Exception):
    """A power action or query that failed (wrong credentials, timeout, BMC error); one line."""


@runtime_checkable
class PowerDriver(Protocol):
    """Switches one host's power. Only the executor calls it (journal, limits, dry-run); every
    call is bounded by the driver's own timeout and raises PowerError, never hangs."""

    async def power_state(self, host: str) -> PowerState: ...

    async def power_on(self, host: str) -> None: ...

    async def power_off(self, host: str, *, hard: bool = False) -> None:
        """Soft (ACPI) off unless ``hard``; fencing a dead host uses ``hard=True``."""
        ...
