"""A simulated hypervisor fleet with a live-migration timing model (implements ports.Hypervisor).

Timing model (pre-copy, as QEMU does it; the executor's own model, `execution.settings.
precopy_timing`, so that the settings are chosen with the model the simulation runs):
- round 0 sends all guest memory at the bandwidth B (MiB/s; link speed when unlimited);
- each next round sends what was dirtied during the previous round: min(memory, D * t_prev),
  with D the dirty rate (auto-converge throttles the guest: D shrinks 20 % more each round from
  round 3 on, down to 1 % of the original);
- when what is left can be sent within the downtime limit (left / B <= max_downtime), the guest is
  paused and the rest copied: downtime = left / B + a fixed switchover cost;
- non-shared disk is copied first (disk / B) while the guest runs;
- if it has not converged when `postcopy_after_s` passes (and post-copy is allowed), the guest
  switches to the target (downtime = switchover cost) and the rest is pulled in (left / B);
- if the time budget runs out first (or after 30 rounds without post-copy) the job is aborted
  and the guest keeps running on the source.

The world (which VM runs where) lives in a SimWorld so that telemetry and hypervisor agree.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from rebalancerd.execution.settings import PrecopyTiming, precopy_timing
from rebalancerd.ports import (
    Clock,
    DomainInfo,
    HostFacts,
    HypervisorError,
    MigrationProgress,
    MigrationResult,
    MigrationSettings,
    ProgressCallback,
)

SWITCHOVER_MS = 15.0
PROGRESS_TICK_S = 1.0


@dataclass
class SimDomain:
    name: str
    memory_mib: int
    dirty_rate_mib_s: float = 0.0
    local_disk_mib: int = 0
    migratable: bool = True
    cpu_model: str = ""
    running: bool = True
    persistent: bool = True
    migrating: bool = False


@dataclass
class SimHost:
    name: str
    link_mib_s: float = 1180.0
    """Migration link speed (about 10 Gbit/s)."""
    cpu_model: str = ""
    reachable: bool = True
    domains: dict[str, SimDomain] = field(default_factory=dict)
    free_memory_mib: int | None = None
    """The node's free memory as its hypervisor would report it (None = not reported)."""


def migration_timing(
    memory_mib: float,
    dirty_rate_mib_s: float,
    settings: MigrationSettings,
    link_mib_s: float,
    local_disk_mib: float = 0.0,
) -> PrecopyTiming:
    """One simulated migration: the executor's pre-copy model (`settings.precopy_timing`) with
    these settings over a link of `link_mib_s`, and a fixed switch-over cost. Pure."""
    return precopy_timing(
        memory_mib,
        dirty_rate_mib_s,
        min(link_mib_s, settings.bandwidth_mib_s or link_mib_s),
        settings.max_downtime_ms,
        time_budget_s=settings.time_budget_s,
        local_disk_mib=local_disk_mib,
        postcopy_after_s=settings.postcopy_after_s,
        auto_converge=settings.auto_converge,
        switchover_ms=SWITCHOVER_MS,
    )


class SimHypervisor:
    """ports.Hypervisor over simulated hosts. Failure injection for tests:
    `fail_next[vm] = "error text"` fails that VM's next migration (VM stays on the source);
    `hosts[h].reachable = False` makes a host unreachable."""

    def __init__(self, clock: Clock, hosts: dict[str, SimHost] | None = None) -> None:
        self.clock = clock
        self.hosts: dict[str, SimHost] = hosts or {}
        self.fail_next: dict[str, str] = {}
        self.migrate_calls: list[tuple[str, str, str]] = []
        self.in_flight: set[str] = set()
        self.max_concurrency_seen = 0
        self._abort: dict[str, asyncio.Event] = {}

    # -- world --------------------------------------------------------------------------------
    def add_host(self, name: str, link_mib_s: float = 1180.0, cpu_model: str = "") -> SimHost:
        h = SimHost(name, link_mib_s, cpu_model)
        self.hosts[name] = h
        return h

    def add_domain(self, host: str, dom: SimDomain) -> None:
        self.hosts[host].domains[dom.name] = dom

    def where(self, vm: str) -> list[str]:
        """Hosts on which the VM is running (exactly one, unless something went wrong)."""
        return [h.name for h in self.hosts.values() if vm in h.domains and h.domains[vm].running]

    def _host(self, name: str) -> SimHost:
        h = self.hosts.get(name)
        if h is None:
            raise HypervisorError(f"unknown host {name!r}")
        if not h.reachable:
            raise HypervisorError(f"host {name} is unreachable")
        return h

    # -- ports.Hypervisor ---------------------------------------------------------------------
    async def domains(self, host: str) -> dict[str, DomainInfo]:
        h = self._host(host)
        return {
            d.name: DomainInfo(d.name, d.running, d.persistent, d.migrating)
            for d in h.domains.values()
        }

    async def host_facts(self, host: str) -> HostFacts:
        h = self._host(host)
        active = [d for d in h.domains.values() if d.running]
        return HostFacts(
            {d.name: d.memory_mib for d in active},
            frozenset(d.name for d in active),
            h.free_memory_mib,
        )

    async def compatible(self, vm: str, source: str, target: str) -> str | None:
        src = self._host(source)
        dst = self._host(target)
        dom = src.domains.get(vm)
        if dom is None:
            return f"vm {vm} is not on {source}"
        if not dom.migratable:
            return f"vm {vm} has devices that cannot migrate"
        if dom.cpu_model and dst.cpu_model and dom.cpu_model != dst.cpu_model:
            return f"guest CPU {dom.cpu_model} not available on {target} ({dst.cpu_model})"
        return None

    async def abort(self, vm: str, source: str) -> None:
        ev = self._abort.get(vm)
        if ev is not None:
            ev.set()

    async def migrate(
        self,
        vm: str,
        source: str,
        target: str,
        settings: MigrationSettings,
        progress: ProgressCallback | None = None,
    ) -> MigrationResult:
        src = self._host(source)
        self.migrate_calls.append((vm, source, target))
        dom = src.domains.get(vm)
        if dom is None or not dom.running:
            return MigrationResult(False, error=f"domain {vm} not running on {source}")
        if dom.migrating:
            return MigrationResult(False, error=f"domain {vm} is already migrating")
        dst = self.hosts.get(target)
        if dst is None or not dst.reachable:
            return MigrationResult(False, error=f"cannot connect to target {target}")
        timing = migration_timing(
            dom.memory_mib,
            dom.dirty_rate_mib_s,
            settings,
            min(src.link_mib_s, dst.link_mib_s),
            dom.local_disk_mib if settings.non_shared_disk else 0,
        )
        dom.migrating = True
        self.in_flight.add(vm)
        self.max_concurrency_seen = max(self.max_concurrency_seen, len(self.in_flight))
        abort_ev = self._abort.setdefault(vm, asyncio.Event())
        abort_ev.clear()
        start = self.clock.monotonic()
        aborted_by_request = False
        try:
            remaining = timing.total_s
            while remaining > 0:
                step = min(PROGRESS_TICK_S, remaining)
                await self.clock.sleep(step)
                remaining -= step
                if abort_ev.is_set():
                    aborted_by_request = True
                    break
                if progress is not None:
                    frac = 1.0 - remaining / timing.total_s if timing.total_s else 1.0
                    progress(
                        MigrationProgress(
                            vm=vm,
                            elapsed_s=self.clock.monotonic() - start,
                            data_total_mib=float(dom.memory_mib),
                            data_remaining_mib=float(dom.memory_mib) * (1.0 - frac),
                            dirty_rate_mib_s=dom.dirty_rate_mib_s,
                            iteration=max(1, int(frac * max(1, timing.rounds))),
                        )
                    )
        finally:
            dom.migrating = False
            self.in_flight.discard(vm)
        elapsed = self.clock.monotonic() - start
        if aborted_by_request:
            return MigrationResult(False, total_s=elapsed, aborted=True, error="aborted")
        injected = self.fail_next.pop(vm, None)
        if injected is not None:
            return MigrationResult(False, total_s=elapsed, error=injected)
        if not dst.reachable:
            return MigrationResult(False, total_s=elapsed, error=f"lost connection to {target}")
        if timing.aborted:
            return MigrationResult(
                False,
                total_s=elapsed,
                transferred_mib=timing.transferred_mib,
                aborted=True,
                error="time budget exhausted: migration aborted, guest still on source",
            )
        # switch the domain over (UNDEFINE_SOURCE + PERSIST_DEST semantics)
        del src.domains[vm]
        dom.persistent = True
        dst.domains[vm] = dom
        return MigrationResult(
            True,
            total_s=timing.total_s,
            downtime_ms=timing.downtime_ms,
            transferred_mib=timing.transferred_mib,
            postcopy=timing.postcopy,
        )
