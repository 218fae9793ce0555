"""Host load and cluster imbalance: the one definition every module uses.

Normalised load of a host (0..1+) for a resource = demand placed on it / its capacity.
CPU demand is each VM's CPU use (or a predicted demand) in reference millicores; memory demand is
each VM's *used* memory (`Weights.used_memory`, the policy's `memory_basis: used`; the configured
size where not measured) or its *allocated* memory; network demand is the VM's throughput over
the host's NIC capacity (`Host.net_capacity_bytes_s`).

Weighted load = (w_cpu * cpu + w_mem * mem + w_net * net) / (w_cpu + w_mem + w_net).

Imbalance of a cluster = max - min of weighted load over the hosts that may take part in
balancing (active hosts). 0 is perfectly even. Stale, maintenance, degraded and standby hosts are
left out (they are being emptied or cannot be trusted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from rebalancerd.domain.model import ClusterSnapshot, Host, HostState, Placement, Vm

CpuDemand = Callable[[Vm], int]


def current_cpu(vm: Vm) -> int:
    return vm.cpu_used_mc


@dataclass(frozen=True, slots=True)
class Weights:
    cpu: float = 1.0
    memory: float = 1.0
    network: float = 0.0
    used_memory: bool = False
    """Memory load is the VM's used memory (`Vm.memory_used_or_configured_mib`), not its size."""

    def __post_init__(self) -> None:
        if min(self.cpu, self.memory, self.network) < 0 or self.total <= 0:
            raise ValueError("weights must be >= 0 and not all 0")

    @property
    def total(self) -> float:
        return self.cpu + self.memory + self.network


def vm_memory(vm: Vm, used: bool) -> int:
    """The memory a VM counts for on its host: used (when measured) or configured."""
    return vm.memory_used_or_configured_mib if used else vm.memory_mib


@dataclass(frozen=True, slots=True)
class HostLoad:
    host: str
    cpu_mc: int
    memory_mib: int
    cpu: float
    """Normalised CPU load (demand / capacity)."""
    memory: float
    """Normalised memory load (allocated / capacity)."""
    vms: int
    network: float = 0.0
    """Normalised network load (VM throughput / NIC capacity)."""

    def weighted(self, w: Weights) -> float:
        return (w.cpu * self.cpu + w.memory * self.memory + w.network * self.network) / w.total


def host_loads(
    snapshot: ClusterSnapshot,
    placement: Placement | None = None,
    cpu_demand: CpuDemand = current_cpu,
    used_memory: bool = False,
) -> dict[str, HostLoad]:
    """Load of every host under a placement (default: the snapshot's own); memory is used
    memory with `used_memory`, else configured."""
    where: Mapping[str, str] = placement if placement is not None else snapshot.placement()
    cpu: dict[str, int] = {h.name: 0 for h in snapshot.hosts}
    mem: dict[str, int] = {h.name: 0 for h in snapshot.hosts}
    net: dict[str, float] = {h.name: 0.0 for h in snapshot.hosts}
    count: dict[str, int] = {h.name: 0 for h in snapshot.hosts}
    for vm in snapshot.vms:
        h = where.get(vm.name, vm.host)
        cpu[h] += cpu_demand(vm)
        mem[h] += vm_memory(vm, used_memory)
        net[h] += vm.net_bytes_s
        count[h] += 1
    return {
        h.name: HostLoad(
            host=h.name,
            cpu_mc=cpu[h.name],
            memory_mib=mem[h.name],
            cpu=cpu[h.name] / h.cpu_capacity_mc,
            memory=mem[h.name] / h.memory_mib,
            vms=count[h.name],
            network=net[h.name] / h.net_capacity_bytes_s,
        )
        for h in snapshot.hosts
    }


def balancing_hosts(hosts: Iterable[Host]) -> list[Host]:
    return [h for h in hosts if h.state is HostState.ACTIVE]


def imbalance(
    snapshot: ClusterSnapshot,
    placement: Placement | None = None,
    weights: Weights = Weights(),
    cpu_demand: CpuDemand = current_cpu,
) -> float:
    """max - min weighted normalised load over active hosts (0.0 with fewer than two)."""
    loads = host_loads(snapshot, placement, cpu_demand, weights.used_memory)
    vals = [loads[h.name].weighted(weights) for h in balancing_hosts(snapshot.hosts)]
    if len(vals) < 2:
        return 0.0
    return max(vals) - min(vals)


def resource_gap(
    snapshot: ClusterSnapshot,
    resource: str,
    placement: Placement | None = None,
    cpu_demand: CpuDemand = current_cpu,
    used_memory: bool = False,
) -> float:
    """max - min of one resource's normalised load ('cpu', 'memory' or 'network') over active
    hosts."""
    loads = host_loads(snapshot, placement, cpu_demand, used_memory)
    vals = [getattr(loads[h.name], resource) for h in balancing_hosts(snapshot.hosts)]
    if len(vals) < 2:
        return 0.0
    return float(max(vals) - min(vals))
