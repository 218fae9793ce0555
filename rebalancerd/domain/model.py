"""Frozen value types of the cluster: hosts, VMs, rules, snapshot, placement.

Pure: no I/O, no clock, no third-party imports. Integer units where drift matters:
CPU in millicores (1 core = 1000), memory in MiB.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum


class HostState(StrEnum):
    ACTIVE = "active"
    MAINTENANCE = "maintenance"
    DEGRADED = "degraded"
    STANDBY = "standby"
    """Switched off by rebalancerd (through its power driver) to save energy."""
    WAKING = "waking"
    """Switched on, not yet verified (BMC on, libvirtd reachable, agent fresh): receives nothing."""
    FAILED_WAKE = "failed_wake"
    """Switched on but did not come back within the wake timeout: receives nothing."""
    STALE = "stale"

    @property
    def may_receive(self) -> bool:
        """Only active hosts may receive VMs."""
        return self is HostState.ACTIVE

    @property
    def may_send(self) -> bool:
        """A stale host is neither a source nor a target: we do not know what runs there."""
        return self is not HostState.STALE


@dataclass(frozen=True, slots=True)
class PowerCurve:
    """Watts at evenly spaced CPU load steps from 0 % to 100 % (e.g. 11 points), linear between."""

    watts: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.watts) < 2:
            raise ValueError("a power curve needs at least two points (0 % and 100 %)")
        if not all(0 <= w < math.inf for w in self.watts):
            raise ValueError("power curve watts must be finite and >= 0")

    def at(self, utilisation: float) -> float:
        """Power at a CPU utilisation in [0, 1] (clamped)."""
        u = min(max(utilisation, 0.0), 1.0)
        steps = len(self.watts) - 1
        pos = u * steps
        i = min(int(pos), steps - 1)
        frac = pos - i
        return self.watts[i] + (self.watts[i + 1] - self.watts[i]) * frac

    @property
    def idle(self) -> float:
        return self.watts[0]

    @property
    def peak(self) -> float:
        return self.watts[-1]


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    cores: int
    memory_mib: int
    state: HostState = HostState.ACTIVE
    tags: frozenset[str] = frozenset()
    speed: float = 1.0
    """Relative speed of one core (1.0 = reference core). CPU capacity = cores x speed."""
    power_curve: PowerCurve | None = None
    cpu_model: str = ""
    """Host CPU model name; a guest whose cpu_model needs another model cannot move here."""
    cpu_features: frozenset[str] = frozenset()
    networks: frozenset[str] | None = None
    """libvirt networks and bridges a guest NIC can attach to here ("network:NAME",
    "bridge:NAME"); None = not known (from the agent's report or the inventory)."""
    net_capacity_bytes_s: float = 1.25e9
    """Usable NIC throughput for guest traffic, bytes/s (default 10 Gbit/s)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("host name must not be empty")
        if self.cores <= 0:
            raise ValueError(f"host {self.name}: cores must be > 0")
        if self.memory_mib <= 0:
            raise ValueError(f"host {self.name}: memory_mib must be > 0")
        if not 0 < self.speed < math.inf:
            raise ValueError(f"host {self.name}: speed must be finite and > 0")
        if self.cpu_capacity_mc < 1:
            raise ValueError(
                f"host {self.name}: CPU capacity (cores x speed) rounds to 0 millicores"
            )

    @property
    def cpu_capacity_mc(self) -> int:
        """CPU capacity in reference millicores."""
        return round(self.cores * 1000 * self.speed)

    def with_state(self, state: HostState) -> Host:
        return replace(self, state=state)


@dataclass(frozen=True, slots=True)
class Vm:
    name: str
    host: str
    vcpus: int
    memory_mib: int
    cpu_used_mc: int = 0
    """Current CPU use in reference millicores (1000 = one full reference core)."""
    memory_used_mib: int = 0
    """Memory the guest really uses (balloon/RSS), MiB; 0 = not measured: use memory_mib."""
    cpu_history_mc: tuple[int, ...] = ()
    """Recent CPU samples, oldest first, in millicores."""
    dirty_rate_mib_s: float | None = None
    """Measured guest memory dirty rate, MiB/s; None = not measured (not the same as 0)."""
    tags: frozenset[str] = frozenset()
    local_disk_mib: int = 0
    """Non-shared storage that a migration must copy (0 = shared storage)."""
    migratable: bool = True
    """False when the guest has devices that cannot move (host passthrough, local PCI...)."""
    cpu_model: str = ""
    """Guest CPU model it needs on the target ('' = any)."""
    required_cpu_features: frozenset[str] = frozenset()
    networks: frozenset[str] = frozenset()
    """Networks/bridges its NICs attach to ("network:NAME", "bridge:NAME"): a target needs all."""
    net_bytes_s: float = 0.0
    """Guest network throughput, received + sent, bytes/s."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("vm name must not be empty")
        if self.vcpus <= 0:
            raise ValueError(f"vm {self.name}: vcpus must be > 0")
        if self.memory_mib <= 0:
            raise ValueError(f"vm {self.name}: memory_mib must be > 0")
        if self.cpu_used_mc < 0 or self.memory_used_mib < 0:
            raise ValueError(f"vm {self.name}: usage must be >= 0")
        if not 0 <= self.dirty_mib_s < math.inf or self.local_disk_mib < 0:
            raise ValueError(f"vm {self.name}: dirty rate (finite) and disk must be >= 0")
        if not 0 <= self.net_bytes_s < math.inf:
            raise ValueError(f"vm {self.name}: network throughput must be finite and >= 0")

    @property
    def dirty_mib_s(self) -> float:
        """The dirty rate for cost estimates: the measured one, 0 when not measured."""
        return self.dirty_rate_mib_s if self.dirty_rate_mib_s is not None else 0.0

    @property
    def memory_used_or_configured_mib(self) -> int:
        """Used memory when measured, else the configured size."""
        return self.memory_used_mib if self.memory_used_mib > 0 else self.memory_mib

    def cpu_demand_mc(self, percentile: float | None = None, window: int | None = None) -> int:
        """Predicted CPU demand: a high percentile of recent history, at least current use."""
        hist = self.cpu_history_mc[-window:] if window else self.cpu_history_mc
        if percentile is None or not hist:
            return self.cpu_used_mc
        return max(self.cpu_used_mc, percentile_of(hist, percentile))

    def moved_to(self, host: str) -> Vm:
        return replace(self, host=host)


def percentile_of(values: Iterable[int], pct: float) -> int:
    """Nearest-rank percentile (pct in 0..100) of integer samples; 0 for no samples."""
    data = sorted(values)
    if not data:
        return 0
    rank = max(1, min(len(data), -(-int(pct * len(data)) // 100)))
    return data[rank - 1]


@dataclass(frozen=True, slots=True)
class AffinityGroup:
    """VMs that must (affinity) or must not (anti-affinity) share a host."""

    name: str
    vms: frozenset[str]
    anti: bool
    hard: bool = True
    weight: float = 1.0
    """Penalty weight when soft."""


@dataclass(frozen=True, slots=True)
class Pin:
    """VM must (hard) or should (soft) run on one of these hosts."""

    vm: str
    hosts: frozenset[str]
    hard: bool = True
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class ClusterRules:
    groups: tuple[AffinityGroup, ...] = ()
    pins: tuple[Pin, ...] = ()
    exclusions: frozenset[str] = frozenset()
    """VMs that never migrate."""

    def merged(self, other: ClusterRules) -> ClusterRules:
        return ClusterRules(
            groups=self.groups + other.groups,
            pins=self.pins + other.pins,
            exclusions=self.exclusions | other.exclusions,
        )

    def hard_pins(self) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {}
        for p in self.pins:
            if p.hard:
                out[p.vm] = out[p.vm] & p.hosts if p.vm in out else p.hosts
        return out


class Placement(Mapping[str, str]):
    """Immutable VM name -> host name mapping."""

    __slots__ = ("_map",)

    def __init__(self, mapping: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._map: dict[str, str] = dict(mapping)

    def __getitem__(self, vm: str) -> str:
        return self._map[vm]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Placement):
            return self._map == other._map
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._map.items()))

    def __repr__(self) -> str:
        return f"Placement({self._map!r})"

    def moved(self, vm: str, host: str) -> Placement:
        new = dict(self._map)
        new[vm] = host
        return Placement(new)

    def diff(self, other: Placement) -> dict[str, tuple[str, str]]:
        """VMs whose host differs: vm -> (host here, host in other)."""
        return {vm: (h, other[vm]) for vm, h in self._map.items() if vm in other and other[vm] != h}


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    hosts: tuple[Host, ...]
    vms: tuple[Vm, ...]
    rules: ClusterRules = field(default_factory=ClusterRules)
    taken_at: float | None = None
    """Wall-clock seconds since the epoch when the data was current (None = unknown)."""

    def __post_init__(self) -> None:
        names = [h.name for h in self.hosts]
        known = set(names)
        if len(known) != len(names):
            raise ValueError(f"duplicate host names: {', '.join(_repeated(names))}")
        vnames = [v.name for v in self.vms]
        if len(set(vnames)) != len(vnames):
            raise ValueError(f"duplicate vm names: {', '.join(_repeated(vnames)[:10])}")
        for v in self.vms:
            if v.host not in known:
                raise ValueError(f"vm {v.name} is on unknown host {v.host!r}")

    # -- lookups ---------------------------------------------------------------------------
    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"unknown host {name!r}")

    def vm(self, name: str) -> Vm:
        for v in self.vms:
            if v.name == name:
                return v
        raise KeyError(f"unknown vm {name!r}")

    def host_map(self) -> dict[str, Host]:
        return {h.name: h for h in self.hosts}

    def vm_map(self) -> dict[str, Vm]:
        return {v.name: v for v in self.vms}

    def placement(self) -> Placement:
        return Placement((v.name, v.host) for v in self.vms)

    def vms_on(self, host: str) -> list[Vm]:
        return [v for v in self.vms if v.host == host]

    # -- derivations -----------------------------------------------------------------------
    def with_placement(self, placement: Placement) -> ClusterSnapshot:
        vms = tuple(
            v.moved_to(placement[v.name]) if placement.get(v.name, v.host) != v.host else v
            for v in self.vms
        )
        return replace(self, vms=vms)

    def with_rules(self, rules: ClusterRules) -> ClusterSnapshot:
        return replace(self, rules=rules)

    def with_host_states(self, states: Mapping[str, HostState]) -> ClusterSnapshot:
        hosts = tuple(h.with_state(states[h.name]) if h.name in states else h for h in self.hosts)
        return replace(self, hosts=hosts)


def _repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted (linear: one counting pass)."""
    return sorted(n for n, k in Counter(names).items() if k > 1)


def power_curve_from_points(points: Iterable[float]) -> PowerCurve:
    return PowerCurve(tuple(float(p) for p in points))


__all__ = [
    "AffinityGroup",
    "ClusterRules",
    "ClusterSnapshot",
    "Host",
    "HostState",
    "Pin",
    "Placement",
    "PowerCurve",
    "Vm",
    "percentile_of",
    "power_curve_from_points",
]
