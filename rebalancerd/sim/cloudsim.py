"""The published CloudSim 3.0.3 power setup (Beloglazov & Buyya 2012) as plain data.

- 800 hosts, host i of type i % 2: HP ProLiant ML110 G4 (2 x 1860 MIPS) and G5 (2 x 2660 MIPS),
  4096 MB RAM, 1 Gbit/s, SPECpower curves (watts at 0, 10, ..., 100 % CPU, linear between).
- Four VM types of one core and 100 Mbit/s: 2500 / 2000 / 1000 / 500 MIPS with 870 / 1740 / 1740 /
  613 MB RAM; VM i of n gets type i // ceil(n / 4).
- Migration time = RAM / (host bandwidth / 2); 10 % of the VM's MIPS lost meanwhile.
- Initial placement: power-aware best fit decreasing (PABFD) on the first sample.

Units: MIPS for CPU (one reference core = 1000 MIPS, so MIPS = reference millicores), MB = MiB
for memory (CloudSim does not distinguish), bandwidth in Mbit/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rebalancerd.domain.model import Host, PowerCurve
from rebalancerd.policy.schema import Policy

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

REFERENCE_CORE_MIPS = 1000.0
HOSTS = 800
INTERVAL_S = 300.0
DAY_S = 86_400.0
MIGRATION_DEGRADATION = 0.10
"""Fraction of a migrating VM's MIPS lost on the source (CloudSim's 0.9 factor)."""
TARGET_SHARE = 0.10
"""Fraction of a migrating VM's MIPS the target host already carries (CloudSim's 0.1 factor)."""


@dataclass(frozen=True, slots=True)
class HostType:
    name: str
    pe_mips: float
    pes: int
    ram_mb: int
    bw_mbit: float
    watts: tuple[float, ...]

    @property
    def total_mips(self) -> float:
        return self.pe_mips * self.pes


@dataclass(frozen=True, slots=True)
class VmType:
    mips: float
    ram_mb: int
    bw_mbit: float = 100.0


G4 = HostType(
    "HP ProLiant ML110 G4",
    1860.0,
    2,
    4096,
    1000.0,
    (86.0, 89.4, 92.6, 96.0, 99.5, 102.0, 106.0, 108.0, 112.0, 114.0, 117.0),
)
G5 = HostType(
    "HP ProLiant ML110 G5",
    2660.0,
    2,
    4096,
    1000.0,
    (93.7, 97.0, 101.0, 105.0, 110.0, 116.0, 121.0, 125.0, 129.0, 133.0, 135.0),
)
HOST_TYPES = (G4, G5)
VM_TYPES = (VmType(2500.0, 870), VmType(2000.0, 1740), VmType(1000.0, 1740), VmType(500.0, 613))


@dataclass(frozen=True)
class DataCentre:
    """Hosts and VMs of one replay as arrays (index = CloudSim id)."""

    host_names: tuple[str, ...]
    host_types: tuple[HostType, ...]
    pe_mips: FloatArray
    total_mips: FloatArray
    host_ram: FloatArray
    host_bw_mbit: FloatArray
    watts: FloatArray
    """Shape (hosts, points): the SPECpower table of each host."""
    vm_names: tuple[str, ...]
    vm_mips: FloatArray
    vm_ram: FloatArray

    @property
    def n_hosts(self) -> int:
        return len(self.host_names)

    @property
    def n_vms(self) -> int:
        return len(self.vm_names)

    def migration_time_s(self, vm: int, source: int, target: int) -> float:
        """CloudSim: RAM / (bandwidth / 2), with the slower of the two hosts' links."""
        bw_mb_s = min(self.host_bw_mbit[source], self.host_bw_mbit[target]) / 8.0
        return float(self.vm_ram[vm] / (bw_mb_s / 2.0))

    def domain_hosts(self, *, enforce_memory: bool = True) -> tuple[Host, ...]:
        """The hosts as domain values: capacity in reference millicores equals their MIPS.

        enforce_memory=False (CloudSim's behaviour, where running VMs request no RAM) gives each
        host room for every VM's memory, so memory never limits a plan."""
        room = int(self.vm_ram.sum()) + 1
        return tuple(
            Host(
                name=name,
                cores=t.pes,
                memory_mib=t.ram_mb if enforce_memory else max(t.ram_mb, room),
                speed=t.pe_mips / REFERENCE_CORE_MIPS,
                power_curve=PowerCurve(t.watts),
                cpu_model=t.name,
            )
            for name, t in zip(self.host_names, self.host_types, strict=True)
        )


def vm_type_index(i: int, n: int) -> int:
    """CloudSim's rule: VM i of n gets type i // ceil(n / 4)."""
    return min(i // math.ceil(n / len(VM_TYPES)), len(VM_TYPES) - 1)


def build_datacentre(vm_names: tuple[str, ...], hosts: int = HOSTS) -> DataCentre:
    if hosts < 1:
        raise ValueError("need at least one host")
    types = tuple(HOST_TYPES[i % 2] for i in range(hosts))
    names = tuple(f"host-{i:03d}-{'g4' if i % 2 == 0 else 'g5'}" for i in range(hosts))
    n = len(vm_names)
    vtypes = [VM_TYPES[vm_type_index(i, n)] for i in range(n)]
    return DataCentre(
        host_names=names,
        host_types=types,
        pe_mips=np.array([t.pe_mips for t in types]),
        total_mips=np.array([t.total_mips for t in types]),
        host_ram=np.array([float(t.ram_mb) for t in types]),
        host_bw_mbit=np.array([t.bw_mbit for t in types]),
        watts=np.array([t.watts for t in types]),
        vm_names=vm_names,
        vm_mips=np.array([t.mips for t in vtypes]),
        vm_ram=np.array([float(t.ram_mb) for t in vtypes]),
    )


def power_w(watts: FloatArray, utilisation: FloatArray) -> FloatArray:
    """SPECpower: linear between the points (rows of `watts`), utilisation clamped to 0..1."""
    u = np.clip(utilisation, 0.0, 1.0)
    steps = watts.shape[1] - 1
    pos = u * steps
    i = np.minimum(np.floor(pos).astype(np.int64), steps - 1)
    rows = np.arange(watts.shape[0])
    lo = watts[rows, i]
    hi = watts[rows, i + 1]
    out: FloatArray = lo + (hi - lo) * (pos - i)
    return out


def pabfd(
    dc: DataCentre,
    demand_mips: FloatArray,
    *,
    max_utilisation: float = 1.0,
) -> IntArray:
    """Power-aware best fit decreasing, as CloudSim's PowerVmAllocationPolicyAbstract does it.

    VMs by decreasing demand; each goes to the host whose power grows least (power after minus
    power before, from the host's curve), among hosts where its demand fits a core and the
    host's spare MIPS and RAM, and where the host stays at or below `max_utilisation` of its
    MIPS (CloudSim's 'not over-utilised after allocation' check; an empty host always may take
    a VM that fits). Ties go to the lowest host index. Returns the host index of every VM.
    Raises ValueError when a VM fits nowhere.
    """
    n = dc.n_vms
    used = np.zeros(dc.n_hosts)
    ram = np.zeros(dc.n_hosts)
    count = np.zeros(dc.n_hosts, dtype=np.int64)
    where = np.full(n, -1, dtype=np.int64)
    order = sorted(range(n), key=lambda i: (-float(demand_mips[i]), i))
    for i in order:
        d = float(demand_mips[i])
        after = used + d
        ok = (
            (dc.pe_mips >= d)
            & (after <= dc.total_mips + 1e-9)
            & (ram + dc.vm_ram[i] <= dc.host_ram)
            & ((count == 0) | (after <= max_utilisation * dc.total_mips + 1e-9))
        )
        if not ok.any():
            raise ValueError(f"vm {dc.vm_names[i]}: no host can take {d:.0f} MIPS")
        diff = power_w(dc.watts, after / dc.total_mips) - power_w(dc.watts, used / dc.total_mips)
        diff = np.where(ok, diff, np.inf)
        h = int(np.argmin(diff))
        where[i] = h
        used[h] += d
        ram[h] += dc.vm_ram[i]
        count[h] += 1
    return where


def default_replay_policy() -> Policy:
    """The policy `rebalancerd simulate` uses without --policy.

    The schema's defaults (low watermark 0.20, hysteresis 0.05, 95th percentile of the last
    12 samples, one migration per source and per target at a time, a VM moves at most once an
    hour) with these deviations, none fitted to a trace:
    - mode consolidate (the benchmark is about energy);
    - CPU only in the load weights: in CloudSim's setup a running VM requests no RAM;
    - relief at the hosts' real capacity (high watermark 1.0, headroom 0): in consolidate mode a
      host's predicted load is already its highest summed sample of the last hour, CloudSim's
      hosts serve up to 100 % of their MIPS and its SLA metric counts the time a host spends
      at 100 %; so a host is relieved when it was (or is) saturated, and packing stops the
      planner's band (5 %) below that;
    - limits sized to an 800-host cluster instead of a handful of hosts: at most 100
      migrations at once (one per source and per target still holds, so each host's 1 Gbit/s
      link carries at most one migration each way) and up to 1,000 per cycle. The daemon's
      defaults (2 at a time, 10 per cycle) would need most of a day to consolidate the
      RAM-bound initial placement (~364 hosts) once; what keeps migrations rare afterwards is
      the planner (packing band, whole hosts only, cooldown), not the per-cycle cap.
    """
    return Policy.model_validate(
        {
            "apiVersion": "rebalancerd/v1",
            "kind": "Policy",
            "name": "simulate-default",
            "mode": "consolidate",
            "targets": {
                "weights": {"cpu": 1.0, "memory": 0.0},
                "high_watermark": 1.0,
                "headroom": 0.0,
            },
            "limits": {"max_per_cycle": 1000, "max_concurrent": 100},
        }
    )
