"""In-test fakes for the executor's unit tests: a scripted ports.Hypervisor and helpers."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from rebalancerd.domain.model import ClusterSnapshot, Host, Vm
from rebalancerd.domain.plan import Migration, MigrationPlan, PlanStep, Reason, ReasonKind
from rebalancerd.policy.schema import Policy
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


@dataclass
class FakeDomain:
    running: bool = True
    persistent: bool = True
    migrating: bool = False
    memory_mib: int = 2048


@dataclass
class FakeHypervisor:
    """Hosts -> domains. `behaviour[vm]` scripts the next migration of a VM:
    ok (default) | fail | abort | lose | both | lie_ok | raise | hang | not_persistent."""

    clock: Clock
    hosts: dict[str, dict[str, FakeDomain]] = field(default_factory=dict)
    duration_s: float = 10.0
    behaviour: dict[str, str] = field(default_factory=dict)
    incompatible: dict[str, str] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    settings_seen: dict[str, MigrationSettings] = field(default_factory=dict)
    aborts: list[str] = field(default_factory=list)
    domain_calls: int = 0
    running_now: set[str] = field(default_factory=set)
    per_source: Counter[str] = field(default_factory=Counter)
    per_target: Counter[str] = field(default_factory=Counter)
    max_total: int = 0
    max_source: int = 0
    max_target: int = 0
    downtimes: dict[str, float] = field(default_factory=dict)
    """Downtime (ms) reported for a VM's next successful migration (default 42)."""
    starts: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, vm) of every migration start."""
    free_mib: dict[str, int] = field(default_factory=dict)
    """A host's free memory as its hypervisor reports it (absent = not reported)."""
    facts_calls: int = 0
    _abort: dict[str, asyncio.Event] = field(default_factory=dict)

    @classmethod
    def for_snapshot(cls, clock: Clock, snap: ClusterSnapshot, **kw: object) -> FakeHypervisor:
        hv = cls(clock, **kw)  # type: ignore[arg-type]
        for h in snap.hosts:
            hv.hosts[h.name] = {}
        for v in snap.vms:
            hv.hosts[v.host][v.name] = FakeDomain(memory_mib=v.memory_mib)
        return hv

    def where(self, vm: str) -> list[str]:
        return [h for h, doms in self.hosts.items() if vm in doms and doms[vm].running]

    def _check(self, host: str) -> dict[str, FakeDomain]:
        if host in self.unreachable or host not in self.hosts:
            raise HypervisorError(f"host {host} unreachable")
        return self.hosts[host]

    async def domains(self, host: str) -> dict[str, DomainInfo]:
        self.domain_calls += 1
        doms = self._check(host)
        return {n: DomainInfo(n, d.running, d.persistent, d.migrating) for n, d in doms.items()}

    async def host_facts(self, host: str) -> HostFacts:
        self.facts_calls += 1
        doms = self._check(host)
        active = {n: d.memory_mib for n, d in doms.items() if d.running}
        return HostFacts(active, frozenset(active), self.free_mib.get(host))

    async def compatible(self, vm: str, source: str, target: str) -> str | None:
        self._check(source)
        self._check(target)
        return self.incompatible.get(vm)

    async def abort(self, vm: str, source: str) -> None:
        self.aborts.append(vm)
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
        self.calls.append((vm, source, target))
        self.starts.append((self.clock.monotonic(), vm))
        self.settings_seen[vm] = settings
        behaviour = self.behaviour.pop(vm, "ok")
        if behaviour == "raise":
            raise HypervisorError(f"source {source} refused")
        src = self._check(source)
        dom = src[vm]
        self.running_now.add(vm)
        self.per_source[source] += 1
        self.per_target[target] += 1
        self.max_total = max(self.max_total, len(self.running_now))
        self.max_source = max(self.max_source, self.per_source[source])
        self.max_target = max(self.max_target, self.per_target[target])
        dom.migrating = True
        ev = self._abort.setdefault(vm, asyncio.Event())
        ev.clear()
        try:
            if behaviour == "hang":
                await ev.wait()
                return MigrationResult(False, total_s=0.0, aborted=True, error="aborted")
            half = self.duration_s / 2
            await self.clock.sleep(half)
            if progress is not None:
                progress(MigrationProgress(vm, half, 1024.0, 512.0, 1.0, 1))
            await self.clock.sleep(self.duration_s - half)
        finally:
            dom.migrating = False
            self.running_now.discard(vm)
            self.per_source[source] -= 1
            self.per_target[target] -= 1
        if behaviour == "fail":
            return MigrationResult(False, total_s=self.duration_s, error="injected failure")
        if behaviour == "abort":
            return MigrationResult(False, total_s=self.duration_s, aborted=True, error="budget")
        if behaviour == "lie_ok":
            return MigrationResult(True, total_s=self.duration_s, downtime_ms=50.0)
        if behaviour == "lose":
            del src[vm]
            return MigrationResult(False, total_s=self.duration_s, error="connection lost")
        if behaviour == "both":
            self.hosts[target][vm] = FakeDomain(memory_mib=dom.memory_mib)
            return MigrationResult(True, total_s=self.duration_s, downtime_ms=50.0)
        del src[vm]
        self.hosts[target][vm] = FakeDomain(
            persistent=behaviour != "not_persistent", memory_mib=dom.memory_mib
        )
        return MigrationResult(
            True,
            total_s=self.duration_s,
            downtime_ms=self.downtimes.pop(vm, 42.0),
            transferred_mib=1024.0,
        )


def policy(**limits: object) -> Policy:
    """A balance policy with the given limits (and `dry_run`/`mode`/`rules`/`migration`/
    `targets` keys)."""
    doc: dict[str, object] = {"apiVersion": "rebalancerd/v1", "kind": "Policy"}
    for k in ("dry_run", "mode", "rules", "migration", "targets"):
        if k in limits:
            doc[k] = limits.pop(k)
    lim = {"cooldown_s": 0.0, "max_per_source": 10, "max_per_target": 10, "max_concurrent": 10}
    lim.update(limits)
    doc["limits"] = lim
    return Policy.model_validate(doc)


def cluster(
    n_hosts: int = 4, vms_per_host: int = 3, memory_mib: int = 65536, vm_mib: int = 2048
) -> ClusterSnapshot:
    hosts = tuple(Host(f"h{i}", cores=16, memory_mib=memory_mib) for i in range(n_hosts))
    vms = tuple(
        Vm(f"vm{i}-{j}", f"h{i}", vcpus=2, memory_mib=vm_mib, cpu_used_mc=500)
        for i in range(n_hosts)
        for j in range(vms_per_host)
    )
    return ClusterSnapshot(hosts, vms, taken_at=1_767_225_600.0)


def mig(vm: str, source: str, target: str, kind: ReasonKind = ReasonKind.BALANCE) -> Migration:
    return Migration(vm, source, target, Reason(kind, "test"), memory_mib=2048)


def plan(*steps: list[Migration]) -> MigrationPlan:
    return MigrationPlan(steps=tuple(PlanStep(tuple(s)) for s in steps))
