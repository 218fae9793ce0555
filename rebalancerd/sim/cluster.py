"""A simulated cluster: hosts, VMs with time-varying load, a SimHypervisor that moves them and a
SimTelemetry source (implements ports.TelemetrySource) that reports what runs where.

Used by `rebalancerd demo`, tests and benchmarks: the same ControlLoop and Executor as
production run against it.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from rebalancerd.domain.model import ClusterRules, ClusterSnapshot, Host, HostState, Vm
from rebalancerd.ports import Clock
from rebalancerd.sim.hypervisor import SimDomain, SimHypervisor

HISTORY = 24


@dataclass
class LoadModel:
    """CPU demand of one VM over time, in reference millicores.

    demand(t) = base * (1 + amplitude * sin(2 pi t / period + phase)) + surge(t),
    where the surge adds `surge_mc` between `surge_start` and `surge_end` (a hotspot appearing).
    """

    base_mc: int
    amplitude: float = 0.2
    period_s: float = 3600.0
    phase: float = 0.0
    surge_mc: int = 0
    surge_start: float = math.inf
    surge_end: float = math.inf

    def at(self, t: float) -> int:
        v = self.base_mc * (
            1.0 + self.amplitude * math.sin(2 * math.pi * t / self.period_s + self.phase)
        )
        if self.surge_start <= t < self.surge_end:
            v += self.surge_mc
        return max(0, round(v))


@dataclass
class TraceLoad:
    """CPU demand replayed from a trace: `samples_mc[i]` holds at i * interval_s, linear in
    between (as CloudSim does), the last sample repeated after the end."""

    samples_mc: tuple[int, ...]
    interval_s: float = 300.0

    def at(self, t: float) -> int:
        if not self.samples_mc:
            return 0
        pos = max(0.0, t) / self.interval_s
        i = int(pos)
        if i >= len(self.samples_mc) - 1:
            return self.samples_mc[-1]
        a, b = self.samples_mc[i], self.samples_mc[i + 1]
        return round(a + (b - a) * (pos - i))


class Load(Protocol):
    def at(self, t: float) -> int: ...


@dataclass
class SimVm:
    name: str
    vcpus: int
    memory_mib: int
    load: Load
    dirty_rate_mib_s: float = 0.0
    tags: frozenset[str] = frozenset()
    history: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY))


class SimCluster:
    """The simulated world. Hosts are domain Hosts (capacity, state); placement is whatever the
    SimHypervisor says; load comes from each VM's LoadModel at the clock's monotonic time."""

    def __init__(self, clock: Clock, hosts: list[Host], rules: ClusterRules | None = None) -> None:
        self.clock = clock
        self.hosts: dict[str, Host] = {h.name: h for h in hosts}
        self.vms: dict[str, SimVm] = {}
        self.rules = rules or ClusterRules()
        self.hypervisor = SimHypervisor(clock)
        for h in hosts:
            self.hypervisor.add_host(h.name, cpu_model=h.cpu_model)

    def add_vm(self, host: str, vm: SimVm) -> None:
        self.vms[vm.name] = vm
        self.hypervisor.add_domain(
            host, SimDomain(vm.name, vm.memory_mib, dirty_rate_mib_s=vm.dirty_rate_mib_s)
        )

    def set_host_state(self, host: str, state: HostState) -> None:
        h = self.hosts[host]
        self.hosts[host] = h.with_state(state)

    def placement(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for h in self.hypervisor.hosts.values():
            for d in h.domains.values():
                if d.running:
                    out[d.name] = h.name
        return out

    def sample(self) -> None:
        """Record one load sample per VM (what an agent would report)."""
        t = self.clock.monotonic()
        for vm in self.vms.values():
            vm.history.append(vm.load.at(t))

    def snapshot(self) -> ClusterSnapshot:
        t = self.clock.monotonic()
        where = self.placement()
        vms = []
        for name, host in sorted(where.items()):
            sv = self.vms[name]
            cur = sv.history[-1] if sv.history else sv.load.at(t)
            vms.append(
                Vm(
                    name=name,
                    host=host,
                    vcpus=sv.vcpus,
                    memory_mib=sv.memory_mib,
                    cpu_used_mc=cur,
                    memory_used_mib=sv.memory_mib * 3 // 4,
                    cpu_history_mc=tuple(sv.history),
                    dirty_rate_mib_s=sv.dirty_rate_mib_s,
                    tags=sv.tags,
                )
            )
        return ClusterSnapshot(
            tuple(self.hosts.values()), tuple(vms), self.rules, taken_at=self.clock.now()
        )


class _HostStates(Mapping[str, HostState]):
    """The simulated hosts' states as a mapping (a view: no copy)."""

    def __init__(self, hosts: Mapping[str, Host]) -> None:
        self._hosts = hosts

    def __getitem__(self, name: str) -> HostState:
        return self._hosts[name].state

    def __iter__(self) -> Iterator[str]:
        return iter(self._hosts)

    def __len__(self) -> int:
        return len(self._hosts)


class SimTelemetry:
    """ports.TelemetrySource over a SimCluster: samples every `interval_s` of clock time."""

    def __init__(self, cluster: SimCluster, interval_s: float = 10.0) -> None:
        self.cluster = cluster
        self.interval_s = interval_s
        self._last: float | None = None

    def tick(self) -> None:
        self.cluster.sample()
        self._last = self.cluster.clock.monotonic()

    async def run(self) -> None:
        while True:
            self.tick()
            await self.cluster.clock.sleep(self.interval_s)

    def current(self) -> ClusterSnapshot:
        if self._last is None:
            self.tick()
        return self.cluster.snapshot()

    def host_states(self) -> Mapping[str, HostState]:
        return _HostStates(self.cluster.hosts)

    def data_age_s(self) -> float:
        if self._last is None:
            return math.inf
        return self.cluster.clock.monotonic() - self._last


def demo_cluster(
    clock: Clock, hosts: int = 16, seed: int = 7, duration_s: float = 1200.0
) -> SimCluster:
    """A cluster that needs balancing: 16 hosts of 32 cores / 256 GiB, VMs piled unevenly at the
    start (a few hot hosts), and a load surge on one host a third of the way in."""
    if hosts < 2:
        raise ValueError("the demo needs at least 2 hosts")
    rng = random.Random(seed)
    host_objs = [
        Host(
            name=f"hv{i + 1:02d}",
            cores=32,
            memory_mib=256 * 1024,
            tags=frozenset({"rack-a" if i % 2 == 0 else "rack-b"}),
        )
        for i in range(hosts)
    ]
    cluster = SimCluster(clock, host_objs)
    sizes = [(1, 2048), (2, 4096), (4, 8192), (8, 16384), (2, 8192), (4, 16384)]
    n_vms = hosts * 9
    # Skew: the first quarter of the hosts get most VMs.
    hot = max(1, hosts // 4)
    surge_host = f"hv{hot + 1:02d}"
    for i in range(n_vms):
        vcpus, mem = rng.choice(sizes)
        if rng.random() < 0.3:
            h = host_objs[rng.randrange(hot)].name
        else:
            h = host_objs[rng.randrange(hosts)].name
        util = rng.uniform(0.25, 0.85)
        load = LoadModel(
            base_mc=round(vcpus * 1000 * util),
            amplitude=rng.uniform(0.05, 0.3),
            period_s=rng.uniform(600, 2400),
            phase=rng.uniform(0, 2 * math.pi),
        )
        if h == surge_host:
            load.surge_mc = vcpus * 600
            load.surge_start = duration_s / 3
            load.surge_end = math.inf
        cluster.add_vm(
            h,
            SimVm(
                name=f"vm{i + 1:03d}",
                vcpus=vcpus,
                memory_mib=mem,
                load=load,
                dirty_rate_mib_s=rng.choice([1.0, 5.0, 20.0, 80.0]),
                tags=frozenset({"web"} if i % 3 == 0 else {"db"} if i % 3 == 1 else {"batch"}),
            ),
        )
    return cluster
